//! Buckets, generations, alloc keys, the freespace index and the allocator.
