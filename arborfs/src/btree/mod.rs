//! B-trees: nodes, the node cache, iterators and transactions.

pub mod node_format;
