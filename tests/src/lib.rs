pub mod app;
pub mod cluster;
