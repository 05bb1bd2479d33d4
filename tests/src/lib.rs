pub mod app;
pub mod cluster;
pub mod fake;
pub mod fence;
pub mod mailpit;
pub mod otlp;
