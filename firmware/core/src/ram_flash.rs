//! A NOR flash in RAM for the host tests of the code that writes flash (the config store, the
//! update's slot writer).

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// NOR flash semantics in RAM: erase sets a 4 KiB sector to 0xFF, a write can only clear bits,
/// and a write can be cut off after `cut_after` bytes (a power cut).
pub struct RamFlash {
    pub mem: std::vec::Vec<u8>,
    /// Erases, per sector.
    pub erases: std::vec::Vec<u32>,
    pub cut_after: Option<usize>,
}

impl RamFlash {
    /// An erased flash of `len` bytes (a multiple of 4 KiB).
    pub fn new(len: usize) -> Self {
        RamFlash {
            mem: vec![0xFF; len],
            erases: vec![0; len / 4096],
            cut_after: None,
        }
    }
}

impl ErrorType for RamFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 4;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        let src = self
            .mem
            .get(o..o + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let (from, to) = (from as usize, to as usize);
        if !from.is_multiple_of(4096) || !to.is_multiple_of(4096) || to > self.mem.len() {
            return Err(NorFlashErrorKind::NotAligned);
        }
        self.mem[from..to].fill(0xFF);
        for s in from / 4096..to / 4096 {
            self.erases[s] += 1;
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let o = offset as usize;
        if !o.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let dst = self
            .mem
            .get_mut(o..o + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        let n = self
            .cut_after
            .take()
            .unwrap_or(bytes.len())
            .min(bytes.len());
        for (dst, src) in dst[..n].iter_mut().zip(bytes) {
            *dst &= *src;
        }
        Ok(())
    }
}
