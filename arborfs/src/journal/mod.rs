//! The journal: a ring of checksummed entries of btree updates.
