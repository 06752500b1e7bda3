pub mod serve;
pub mod test;
