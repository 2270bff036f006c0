//! B-trees: nodes, the node cache, iterators and transactions.

pub mod cache;
pub mod iter;
pub mod node;
pub mod node_format;
pub mod trans;
pub mod tree;
