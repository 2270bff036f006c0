//! A device held in memory: for tests and for embedding without a file.

use super::{Device, DeviceError, check_range};
use parking_lot::RwLock;

pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
}

impl MemDevice {
    pub fn new(size: u64) -> MemDevice {
        MemDevice {
            bytes: RwLock::new(vec![0; size as usize]),
        }
    }

    pub fn from_bytes(bytes: Vec<u8>) -> MemDevice {
        MemDevice {
            bytes: RwLock::new(bytes),
        }
    }

    /// A copy of the whole device.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let bytes = self.bytes.read();
        check_range("read", offset, buf.len(), bytes.len() as u64)?;
        buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let mut bytes = self.bytes.write();
        check_range("write", offset, buf.len(), bytes.len() as u64)?;
        bytes[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes.read().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_rejects_out_of_range() {
        let d = MemDevice::new(4096);
        d.write_at(&[1, 2, 3], 100).unwrap();
        let mut b = [0u8; 3];
        d.read_at(&mut b, 100).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(matches!(
            d.write_at(&[0; 2], 4095),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(d.read_at(&mut b, u64::MAX).is_err());
    }
}
