pub mod app;
pub mod cluster;
pub mod fence;
pub mod mailpit;
