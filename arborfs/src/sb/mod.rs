//! The superblock: primary and backup copies.
