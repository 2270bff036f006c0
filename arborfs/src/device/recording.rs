//! A test device that records every write and flush, so crash tests can build
//! the image a power failure at any point would leave behind, and that can
//! inject IO errors.
//!
//! Model: a write is durable once a later flush completed. A crash loses,
//! keeps, or tears (keeps only some 512-byte sectors of) each write issued
//! since the last flush.

use super::{Device, DeviceError, check_range};
use parking_lot::Mutex;

/// Bytes in the unit a torn write keeps or loses.
const TEAR_SECTOR: usize = 512;

/// One recorded operation. Reads are not recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

/// What a crash does to one write that was not yet flushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFate {
    /// The whole write reached the media.
    Keep,
    /// None of it did.
    Lose,
    /// One bool per 512-byte sector of the write (the last may be partial);
    /// only sectors marked `true` reached the media. Missing entries count
    /// as `false`.
    Torn { keep: Vec<bool> },
}

struct State {
    initial: Vec<u8>,
    current: Vec<u8>,
    ops: Vec<Op>,
    /// Successful operations left before every operation fails.
    fail_after: Option<u64>,
}

/// An in-memory device that logs writes and flushes. See the module doc.
pub struct RecordingDevice {
    state: Mutex<State>,
}

impl RecordingDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: u64) -> RecordingDevice {
        RecordingDevice::from_image(vec![0; size as usize])
    }

    /// A device starting from `image` (treated as durable).
    pub fn from_image(image: Vec<u8>) -> RecordingDevice {
        RecordingDevice {
            state: Mutex::new(State {
                current: image.clone(),
                initial: image,
                ops: Vec::new(),
                fail_after: None,
            }),
        }
    }

    /// Number of recorded operations (writes and flushes).
    pub fn op_count(&self) -> usize {
        self.state.lock().ops.len()
    }

    /// A copy of the operation log.
    pub fn ops(&self) -> Vec<Op> {
        self.state.lock().ops.clone()
    }

    /// Op indices right after each flush: crashing "before op `i`" for such
    /// an `i` loses nothing.
    pub fn flush_points(&self) -> Vec<usize> {
        self.state
            .lock()
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::Flush))
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// The image as reads see it now (every write so far applied).
    pub fn current_image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }

    /// The image a crash right before op `upto` leaves (`upto` is clamped to
    /// [`RecordingDevice::op_count`]). Writes before the last flush preceding
    /// `upto` are durable; every later write before `upto` gets the fate
    /// `fate(i, data)` returns, `i` counting those unflushed writes from 0.
    pub fn crash_image(
        &self,
        upto: usize,
        mut fate: impl FnMut(usize, &[u8]) -> WriteFate,
    ) -> Vec<u8> {
        let st = self.state.lock();
        let upto = upto.min(st.ops.len());
        let durable = durable_prefix(&st.ops[..upto]);
        let mut image = st.initial.clone();
        for op in &st.ops[..durable] {
            if let Op::Write { offset, data } = op {
                apply(&mut image, *offset, data);
            }
        }
        let unflushed = st.ops[durable..upto].iter().filter_map(|op| match op {
            Op::Write { offset, data } => Some((*offset, data)),
            Op::Flush => None,
        });
        for (i, (offset, data)) in unflushed.enumerate() {
            match fate(i, data) {
                WriteFate::Keep => apply(&mut image, offset, data),
                WriteFate::Lose => {}
                WriteFate::Torn { keep } => {
                    for (s, chunk) in data.chunks(TEAR_SECTOR).enumerate() {
                        if keep.get(s).copied().unwrap_or(false) {
                            apply(&mut image, offset + (s * TEAR_SECTOR) as u64, chunk);
                        }
                    }
                }
            }
        }
        image
    }

    /// [`RecordingDevice::crash_image`] with fates drawn from a PRNG seeded
    /// by `seed`: each unflushed write is kept with probability 1/2, and with
    /// probability 1/4 one of them is instead torn at random sectors.
    pub fn random_crash_image(&self, upto: usize, seed: u64) -> Vec<u8> {
        let unflushed = {
            let st = self.state.lock();
            let upto = upto.min(st.ops.len());
            let durable = durable_prefix(&st.ops[..upto]);
            st.ops[durable..upto]
                .iter()
                .filter(|op| matches!(op, Op::Write { .. }))
                .count()
        };
        let mut rng = SplitMix64(seed);
        let torn = if unflushed > 0 && rng.next().is_multiple_of(4) {
            Some((rng.next() % unflushed as u64) as usize)
        } else {
            None
        };
        self.crash_image(upto, |i, data| {
            if torn == Some(i) {
                let sectors = data.len().div_ceil(TEAR_SECTOR);
                WriteFate::Torn {
                    keep: (0..sectors).map(|_| rng.next() & 1 == 1).collect(),
                }
            } else if rng.next() & 1 == 1 {
                WriteFate::Keep
            } else {
                WriteFate::Lose
            }
        })
    }

    /// After `n` more successful operations (reads, writes and flushes all
    /// count), every operation fails with [`DeviceError::Injected`].
    /// `None` turns failure injection off.
    pub fn fail_after(&self, n: Option<u64>) {
        self.state.lock().fail_after = n;
    }
}

/// Index just past the last flush in `ops` (0 if none).
fn durable_prefix(ops: &[Op]) -> usize {
    ops.iter()
        .rposition(|op| matches!(op, Op::Flush))
        .map_or(0, |i| i + 1)
}

fn apply(image: &mut [u8], offset: u64, data: &[u8]) {
    let start = offset as usize;
    image[start..start + data.len()].copy_from_slice(data);
}

impl State {
    /// Checks failure injection; call before doing the operation.
    fn injected(&self, op: &'static str) -> Result<(), DeviceError> {
        match self.fail_after {
            Some(0) => Err(DeviceError::Injected { op }),
            _ => Ok(()),
        }
    }

    /// Counts one successful operation against `fail_after`.
    fn succeeded(&mut self) {
        if let Some(n) = &mut self.fail_after {
            *n = n.saturating_sub(1);
        }
    }
}

impl Device for RecordingDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let mut st = self.state.lock();
        st.injected("read")?;
        check_range("read", offset, buf.len(), st.current.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&st.current[start..start + buf.len()]);
        st.succeeded();
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let mut st = self.state.lock();
        st.injected("write")?;
        check_range("write", offset, buf.len(), st.current.len() as u64)?;
        apply(&mut st.current, offset, buf);
        st.ops.push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        st.succeeded();
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let mut st = self.state.lock();
        st.injected("flush")?;
        st.ops.push(Op::Flush);
        st.succeeded();
        Ok(())
    }

    fn size(&self) -> u64 {
        self.state.lock().current.len() as u64
    }
}

/// SplitMix64: tiny, deterministic, good enough to pick crash fates.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_sync() {
        assert_send_sync::<RecordingDevice>();
    }

    #[test]
    fn reads_see_writes() {
        let d = RecordingDevice::new(4096);
        d.write_at(&[7; 10], 100).unwrap();
        let mut b = [0u8; 10];
        d.read_at(&mut b, 100).unwrap();
        assert_eq!(b, [7; 10]);
        assert_eq!(d.op_count(), 1);
        assert!(matches!(
            d.write_at(&[0; 2], 4095),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert_eq!(d.op_count(), 1);
    }

    /// Writes `n` 1 KiB writes of distinct bytes, flushing after each `every`.
    fn scripted(n: u8, every: u8) -> RecordingDevice {
        let d = RecordingDevice::new(64 * 1024);
        for i in 0..n {
            d.write_at(&[i + 1; 1024], i as u64 * 1024).unwrap();
            if (i + 1) % every == 0 {
                d.flush().unwrap();
            }
        }
        d
    }

    #[test]
    fn crash_at_flush_point_equals_image_then() {
        let d = RecordingDevice::new(64 * 1024);
        let mut snapshots = Vec::new();
        for i in 0..9u8 {
            d.write_at(&[i + 1; 1024], (i as u64 % 5) * 1024).unwrap();
            if i % 3 == 2 {
                d.flush().unwrap();
                snapshots.push(d.current_image());
            }
        }
        let points = d.flush_points();
        assert_eq!(points, vec![4, 8, 12]);
        for (p, snap) in points.iter().zip(&snapshots) {
            // whatever the fates, nothing is unflushed at a flush point
            assert!(&d.crash_image(*p, |_, _| WriteFate::Lose) == snap);
            assert!(&d.crash_image(*p, |_, _| WriteFate::Keep) == snap);
            assert!(&d.random_crash_image(*p, 9) == snap);
        }
        assert!(d.crash_image(usize::MAX, |_, _| WriteFate::Keep) == d.current_image());
    }

    #[test]
    fn losing_unflushed_writes_gives_flushed_image() {
        let d = scripted(5, 2); // W W F W W F W
        assert_eq!(d.op_count(), 7);
        let mut expected = vec![0u8; 64 * 1024];
        for i in 0..4u8 {
            expected[i as usize * 1024..(i as usize + 1) * 1024].fill(i + 1);
        }
        let mut seen = Vec::new();
        let img = d.crash_image(7, |i, data| {
            seen.push((i, data[0]));
            WriteFate::Lose
        });
        assert!(img == expected);
        assert_eq!(seen, vec![(0, 5)]);
        // before op 4 (the second write after the first flush) only op 3 is unflushed
        let img = d.crash_image(4, |_, _| WriteFate::Lose);
        expected[2048..4096].fill(0);
        assert!(img == expected);
        let img = d.crash_image(4, |_, _| WriteFate::Keep);
        expected[2048..3072].fill(3);
        assert!(img == expected);
    }

    #[test]
    fn torn_write_keeps_exactly_chosen_sectors() {
        let d = RecordingDevice::new(8192);
        d.write_at(&[0xaa; 4096], 0).unwrap();
        d.flush().unwrap();
        // 2000 bytes at 100: sectors [100,612) [612,1124) [1124,1636) [1636,2100)
        d.write_at(&[0x55; 2000], 100).unwrap();
        let img = d.crash_image(3, |_, _| WriteFate::Torn {
            keep: vec![true, false, false, true],
        });
        let mut expected = vec![0u8; 8192];
        expected[..4096].fill(0xaa);
        expected[100..612].fill(0x55);
        expected[1636..2100].fill(0x55);
        assert!(img == expected);
        // missing entries mean "not kept"
        let img = d.crash_image(3, |_, _| WriteFate::Torn {
            keep: vec![false, true],
        });
        let mut expected2 = vec![0u8; 8192];
        expected2[..4096].fill(0xaa);
        expected2[612..1124].fill(0x55);
        assert!(img == expected2);
    }

    #[test]
    fn random_crash_images_are_deterministic_and_plausible() {
        let d = scripted(12, 5);
        let flushed = d.crash_image(usize::MAX, |_, _| WriteFate::Lose);
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..64 {
            let a = d.random_crash_image(usize::MAX, seed);
            assert!(a == d.random_crash_image(usize::MAX, seed));
            // durable part never changes
            assert!(a[..10 * 1024] == flushed[..10 * 1024]);
            distinct.insert(a);
        }
        assert!(distinct.len() > 2);
    }

    #[test]
    fn fail_after_injects_errors() {
        let d = RecordingDevice::new(4096);
        d.fail_after(Some(2));
        d.write_at(&[1], 0).unwrap();
        let mut b = [0u8; 1];
        d.read_at(&mut b, 0).unwrap();
        assert!(matches!(
            d.flush(),
            Err(DeviceError::Injected { op: "flush" })
        ));
        assert!(matches!(
            d.read_at(&mut b, 0),
            Err(DeviceError::Injected { .. })
        ));
        assert!(matches!(
            d.write_at(&[2], 0),
            Err(DeviceError::Injected { .. })
        ));
        assert_eq!(d.op_count(), 1);
        d.fail_after(None);
        d.flush().unwrap();
        d.fail_after(Some(0));
        assert!(d.read_at(&mut b, 0).is_err());
    }
}
