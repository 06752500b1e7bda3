pub mod dlq;
pub mod plugin;
pub mod publish;
pub mod serve;
pub mod test;
