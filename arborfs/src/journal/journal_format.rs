//! On-disk layout of a journal entry (little-endian throughout). The same
//! tables are in `docs/format.md` (section 7).
//!
//! An entry starts at a 4096-aligned offset of the journal region and takes
//! `round_up(HEADER_BYTES + payload_len, 4096)` bytes; it never wraps around
//! the end of the region.
//!
//! ## Header (64 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | `magic` = [`JOURNAL_MAGIC`] XOR (first 8 bytes of the filesystem UUID, read as a little-endian u64) |
//! | 8  | 4 | `csum`: crc32c, see below |
//! | 12 | 4 | `version` = [`JOURNAL_VERSION`] |
//! | 16 | 8 | `seq`: sequence number of this entry, >= 1 |
//! | 24 | 8 | `prev_seq`: seq of the entry written just before this one (0: none); < `seq` |
//! | 32 | 8 | `last_seq`: oldest entry still needed for replay when this one was written; 1 <= `last_seq` <= `seq` |
//! | 40 | 8 | `offset`: byte offset of this entry from the start of the journal region |
//! | 48 | 4 | `payload_len`: bytes of items following the header |
//! | 52 | 4 | `item_count` |
//! | 56 | 8 | reserved, zero |
//! | 64 | `payload_len` | items, back to back |
//! | .. | .. | zero padding up to the next multiple of 4096 |
//!
//! `csum` is `crc32c` seeded with the crc32c of the 16-byte filesystem UUID,
//! then continued over bytes `[0, 8)` and `[12, total)` of the entry, where
//! `total` is the padded length: the header (without the checksum itself),
//! the payload AND the padding are covered, so any changed byte of a written
//! entry invalidates it, and an entry of another filesystem never validates.
//!
//! ## Item (8-byte item header, then a body; every item is a multiple of 8 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `type`: 1 = Put, 2 = Delete, 3 = Root |
//! | 1 | 1 | `btree`: [`BtreeId`] number |
//! | 2 | 1 | Root only: 1 if a pointer is present, 0 for an empty tree; else 0 |
//! | 3 | 5 | reserved, zero |
//! | 8 | .. | body |
//!
//! Bodies:
//! * Put: the key as encoded by [`encode_key`] (32-byte key header + value
//!   padded to 8 bytes).
//! * Delete: the position as encoded by [`encode_pos`] (20 bytes), then 4
//!   zero bytes (24 bytes).
//! * Root: the [`BtreePtr`] encoding (24 bytes); all zero when absent.

use super::JournalItem;
use crate::btree::node_format::{BTREE_PTR_BYTES, BtreePtr};
use crate::key::key_format::{decode_key, decode_pos, encode_key, encode_pos};
use crate::key::{BtreeId, Key, Pos};

/// Fixed part of the magic ("ArborJnl" read little-endian, XOR-ed with the UUID).
pub const JOURNAL_MAGIC: u64 = u64::from_le_bytes(*b"ArborJnl");
pub const JOURNAL_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;
/// Entries start on, and are padded to, this alignment.
pub const JOURNAL_BLOCK: u64 = 4096;
pub const ITEM_HEADER_BYTES: usize = 8;
pub const DELETE_BODY_BYTES: usize = 24;
pub const ROOT_BODY_BYTES: usize = BTREE_PTR_BYTES;

pub const ITEM_PUT: u8 = 1;
pub const ITEM_DELETE: u8 = 2;
pub const ITEM_ROOT: u8 = 3;

pub const OFF_MAGIC: usize = 0;
pub const OFF_CSUM: usize = 8;
pub const OFF_VERSION: usize = 12;
pub const OFF_SEQ: usize = 16;
pub const OFF_PREV_SEQ: usize = 24;
pub const OFF_LAST_SEQ: usize = 32;
pub const OFF_OFFSET: usize = 40;
pub const OFF_PAYLOAD_LEN: usize = 48;
pub const OFF_ITEM_COUNT: usize = 52;
pub const OFF_RESERVED: usize = 56;

/// The magic of entries belonging to the filesystem with `uuid`.
pub fn magic_for(uuid: &[u8; 16]) -> u64 {
    JOURNAL_MAGIC ^ u64::from_le_bytes(uuid[0..8].try_into().unwrap())
}

/// Padded length of an entry with `payload_len` bytes of items.
pub fn entry_total_bytes(payload_len: usize) -> u64 {
    ((HEADER_BYTES + payload_len) as u64).next_multiple_of(JOURNAL_BLOCK)
}

/// The checksum of a whole padded entry (the `csum` field itself is skipped).
pub fn entry_csum(uuid: &[u8; 16], entry: &[u8]) -> u32 {
    let c = crc32c::crc32c(uuid);
    let c = crc32c::crc32c_append(c, &entry[..OFF_CSUM]);
    crc32c::crc32c_append(c, &entry[OFF_CSUM + 4..])
}

/// The fixed-size entry header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub magic: u64,
    pub csum: u32,
    pub version: u32,
    pub seq: u64,
    pub prev_seq: u64,
    pub last_seq: u64,
    pub offset: u64,
    pub payload_len: u32,
    pub item_count: u32,
}

impl EntryHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&self.magic.to_le_bytes());
        b[OFF_CSUM..OFF_CSUM + 4].copy_from_slice(&self.csum.to_le_bytes());
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        b[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
        b[OFF_PREV_SEQ..OFF_PREV_SEQ + 8].copy_from_slice(&self.prev_seq.to_le_bytes());
        b[OFF_LAST_SEQ..OFF_LAST_SEQ + 8].copy_from_slice(&self.last_seq.to_le_bytes());
        b[OFF_OFFSET..OFF_OFFSET + 8].copy_from_slice(&self.offset.to_le_bytes());
        b[OFF_PAYLOAD_LEN..OFF_PAYLOAD_LEN + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        b[OFF_ITEM_COUNT..OFF_ITEM_COUNT + 4].copy_from_slice(&self.item_count.to_le_bytes());
        b
    }

    /// Decodes the raw fields; `None` if `b` is too short or the reserved
    /// bytes are not zero. Does not validate anything else.
    pub fn decode(b: &[u8]) -> Option<EntryHeader> {
        if b.len() < HEADER_BYTES || b[OFF_RESERVED..HEADER_BYTES].iter().any(|&x| x != 0) {
            return None;
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        Some(EntryHeader {
            magic: u64_at(OFF_MAGIC),
            csum: u32_at(OFF_CSUM),
            version: u32_at(OFF_VERSION),
            seq: u64_at(OFF_SEQ),
            prev_seq: u64_at(OFF_PREV_SEQ),
            last_seq: u64_at(OFF_LAST_SEQ),
            offset: u64_at(OFF_OFFSET),
            payload_len: u32_at(OFF_PAYLOAD_LEN),
            item_count: u32_at(OFF_ITEM_COUNT),
        })
    }

    /// Padded length of the entry this header starts.
    pub fn total_bytes(&self) -> u64 {
        entry_total_bytes(self.payload_len as usize)
    }

    /// Checks everything that can be checked from the header alone, for an
    /// entry found at region offset `offset` of a region of `region_len` bytes.
    pub fn check(&self, uuid: &[u8; 16], offset: u64, region_len: u64) -> Result<(), String> {
        if self.magic != magic_for(uuid) {
            return Err("bad magic".into());
        }
        if self.version != JOURNAL_VERSION {
            return Err(format!("unsupported version {}", self.version));
        }
        if self.offset != offset {
            return Err(format!(
                "entry records offset {} but lies at {offset}",
                self.offset
            ));
        }
        if self.seq == 0 || self.prev_seq >= self.seq {
            return Err(format!("bad seq {} / prev_seq {}", self.seq, self.prev_seq));
        }
        if self.last_seq == 0 || self.last_seq > self.seq {
            return Err(format!(
                "bad last_seq {} for seq {}",
                self.last_seq, self.seq
            ));
        }
        let fits = offset
            .checked_add(self.total_bytes())
            .is_some_and(|end| end <= region_len);
        if !fits {
            return Err(format!(
                "payload length {} runs past the region",
                self.payload_len
            ));
        }
        // Every item takes at least 32 bytes.
        if (self.item_count as u64) * 32 > self.payload_len as u64 {
            return Err(format!(
                "{} items cannot fit in {} bytes",
                self.item_count, self.payload_len
            ));
        }
        Ok(())
    }
}

/// Bytes `item` takes when encoded.
pub fn item_encoded_len(item: &JournalItem) -> usize {
    ITEM_HEADER_BYTES
        + match item {
            JournalItem::Put { key, .. } => crate::key::key_format::encoded_len(key.value.len()),
            JournalItem::Delete { .. } => DELETE_BODY_BYTES,
            JournalItem::Root { .. } => ROOT_BODY_BYTES,
        }
}

/// Encodes a Put item of `key` (what [`encode_item`] writes for
/// [`JournalItem::Put`], without building the item).
pub fn encode_put(out: &mut Vec<u8>, btree: BtreeId, key: &Key) {
    out.extend_from_slice(&[ITEM_PUT, btree as u8, 0, 0, 0, 0, 0, 0]);
    encode_key(out, key);
}

/// Encodes a Delete item (see [`encode_put`]).
pub fn encode_delete(out: &mut Vec<u8>, btree: BtreeId, pos: Pos) {
    out.extend_from_slice(&[ITEM_DELETE, btree as u8, 0, 0, 0, 0, 0, 0]);
    encode_pos(out, pos);
    out.extend_from_slice(&[0; 4]);
}

pub fn encode_item(out: &mut Vec<u8>, item: &JournalItem) {
    match item {
        JournalItem::Put { btree, key } => encode_put(out, *btree, key),
        JournalItem::Delete { btree, pos } => encode_delete(out, *btree, *pos),
        JournalItem::Root { btree, ptr } => {
            let present = ptr.is_some() as u8;
            out.extend_from_slice(&[ITEM_ROOT, *btree as u8, present, 0, 0, 0, 0, 0]);
            match ptr {
                Some(p) => out.extend_from_slice(&p.encode()),
                None => out.extend_from_slice(&[0; ROOT_BODY_BYTES]),
            }
        }
    }
}

/// Decodes one item from the front of `b`; returns it and the bytes used.
/// Never panics.
pub fn decode_item(b: &[u8]) -> Result<(JournalItem, usize), String> {
    if b.len() < ITEM_HEADER_BYTES {
        return Err("item header truncated".into());
    }
    let btree = BtreeId::from_u8(b[1]).ok_or_else(|| format!("unknown btree id {}", b[1]))?;
    if b[3..ITEM_HEADER_BYTES].iter().any(|&x| x != 0) {
        return Err("reserved item bytes are not zero".into());
    }
    let body = &b[ITEM_HEADER_BYTES..];
    match b[0] {
        ITEM_PUT => {
            if b[2] != 0 {
                return Err("reserved item bytes are not zero".into());
            }
            let (key, used) = decode_key(body).map_err(|e| e.to_string())?;
            Ok((JournalItem::Put { btree, key }, ITEM_HEADER_BYTES + used))
        }
        ITEM_DELETE => {
            if b[2] != 0 {
                return Err("reserved item bytes are not zero".into());
            }
            if body.len() < DELETE_BODY_BYTES {
                return Err("delete item truncated".into());
            }
            if body[20..24] != [0; 4] {
                return Err("delete item padding is not zero".into());
            }
            let pos = decode_pos(&body[..20]);
            Ok((
                JournalItem::Delete { btree, pos },
                ITEM_HEADER_BYTES + DELETE_BODY_BYTES,
            ))
        }
        ITEM_ROOT => {
            if body.len() < ROOT_BODY_BYTES {
                return Err("root item truncated".into());
            }
            let ptr = match b[2] {
                0 if body[..ROOT_BODY_BYTES].iter().all(|&x| x == 0) => None,
                0 => return Err("empty root item has a nonzero pointer".into()),
                1 => Some(
                    BtreePtr::decode(&body[..ROOT_BODY_BYTES])
                        .ok_or("bad btree pointer in root item")?,
                ),
                f => return Err(format!("bad root flag {f}")),
            };
            Ok((
                JournalItem::Root { btree, ptr },
                ITEM_HEADER_BYTES + ROOT_BODY_BYTES,
            ))
        }
        t => Err(format!("unknown item type {t}")),
    }
}

/// Decodes exactly `count` items filling all of `payload`. Never panics.
pub fn decode_items(payload: &[u8], count: u32) -> Result<Vec<JournalItem>, String> {
    let mut items = Vec::with_capacity((count as usize).min(payload.len() / 32));
    let mut at = 0;
    for i in 0..count {
        let (item, used) = decode_item(&payload[at..])
            .map_err(|e| format!("item {i} at payload byte {at}: {e}"))?;
        items.push(item);
        at += used;
    }
    if at != payload.len() {
        return Err(format!(
            "{} payload bytes after the last item",
            payload.len() - at
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, Pos};

    #[test]
    fn header_layout() {
        let h = EntryHeader {
            magic: 0x1122334455667788,
            csum: 0xaabbccdd,
            version: JOURNAL_VERSION,
            seq: 9,
            prev_seq: 8,
            last_seq: 3,
            offset: 8192,
            payload_len: 100,
            item_count: 2,
        };
        let b = h.encode();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..8], &0x1122334455667788u64.to_le_bytes());
        assert_eq!(&b[8..12], &0xaabbccddu32.to_le_bytes());
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(&b[16..24], &9u64.to_le_bytes());
        assert_eq!(&b[24..32], &8u64.to_le_bytes());
        assert_eq!(&b[32..40], &3u64.to_le_bytes());
        assert_eq!(&b[40..48], &8192u64.to_le_bytes());
        assert_eq!(&b[48..52], &100u32.to_le_bytes());
        assert_eq!(&b[52..56], &2u32.to_le_bytes());
        assert_eq!(&b[56..64], &[0; 8]);
        assert_eq!(EntryHeader::decode(&b), Some(h));
        let mut bad = b;
        bad[60] = 1;
        assert_eq!(EntryHeader::decode(&bad), None);
        assert_eq!(EntryHeader::decode(&b[..63]), None);
        assert_eq!(h.total_bytes(), 4096);
        assert_eq!(entry_total_bytes(4096 - 64), 4096);
        assert_eq!(entry_total_bytes(4096 - 63), 8192);
    }

    #[test]
    fn magic_mixes_uuid() {
        assert_eq!(JOURNAL_MAGIC, 0x6c6e_4a72_6f62_7241);
        let a = magic_for(&[0; 16]);
        assert_eq!(a, JOURNAL_MAGIC);
        let mut u = [0u8; 16];
        u[0] = 1;
        assert_eq!(magic_for(&u), JOURNAL_MAGIC ^ 1);
    }

    #[test]
    fn item_layouts() {
        let key = Key::blob(Pos::new(1, 2, 3), vec![7; 5]);
        let ptr = BtreePtr {
            offset: 4096,
            seq: 5,
            sectors: 8,
            generation: 1,
            level: 2,
        };
        let items = [
            JournalItem::Put {
                btree: BtreeId::Dirents,
                key: key.clone(),
            },
            JournalItem::Delete {
                btree: BtreeId::Inodes,
                pos: Pos::new(4, 5, 6),
            },
            JournalItem::Root {
                btree: BtreeId::Alloc,
                ptr: Some(ptr),
            },
            JournalItem::Root {
                btree: BtreeId::Freespace,
                ptr: None,
            },
        ];
        let mut out = Vec::new();
        encode_item(&mut out, &items[0]);
        assert_eq!(out.len(), 8 + 40);
        assert_eq!(&out[..8], &[1, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[8..16], &1u64.to_le_bytes());
        out.clear();
        encode_item(&mut out, &items[1]);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..8], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[8..16], &4u64.to_le_bytes());
        assert_eq!(&out[16..24], &5u64.to_le_bytes());
        assert_eq!(&out[24..28], &6u32.to_le_bytes());
        assert_eq!(&out[28..32], &[0; 4]);
        out.clear();
        encode_item(&mut out, &items[2]);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..8], &[3, 7, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&out[8..32], &ptr.encode());
        out.clear();
        encode_item(&mut out, &items[3]);
        assert_eq!(&out[..8], &[3, 8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[8..32], &[0; 24]);

        out.clear();
        for it in &items {
            let before = out.len();
            encode_item(&mut out, it);
            assert_eq!(out.len() - before, item_encoded_len(it));
            assert_eq!(out.len() % 8, 0);
        }
        assert_eq!(decode_items(&out, 4).unwrap(), items.to_vec());
        assert!(decode_items(&out, 3).is_err());
        assert!(decode_items(&out, 5).is_err());
        assert!(decode_items(&out[..out.len() - 1], 4).is_err());
    }
}
