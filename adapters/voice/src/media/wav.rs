//! WAV files: a reader for 8 kHz mono prompts (PCM16, A-law or µ-law) and a writer
//! for recordings (mono voicemail or stereo calls) whose header is patched on close.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::g711::{alaw_to_linear, ulaw_to_linear};

/// WAV problems.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// Not a RIFF/WAVE file or a truncated one.
    #[error("{0}: not a valid WAV file ({1})")]
    Invalid(PathBuf, &'static str),
    /// A format we do not play (we need 8 kHz mono PCM16/G.711).
    #[error("{0}: unsupported WAV format ({1})")]
    Unsupported(PathBuf, String),
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_ULAW: u16 = 7;

/// Decodes a WAV image into 8 kHz mono linear samples.
pub fn decode_wav(bytes: &[u8], path: &Path) -> Result<Vec<i16>, WavError> {
    let invalid = |why| WavError::Invalid(path.to_path_buf(), why);
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(invalid("no RIFF/WAVE header"));
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        let start = pos + 8;
        // Writers that never patched the header leave 0 or 0xFFFFFFFF: take the rest.
        let end = start.saturating_add(size).min(bytes.len());
        let body = &bytes[start..end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(invalid("short fmt chunk"));
                }
                let le16 = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                format = Some((le16(0), le16(2), rate, le16(14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) = format.ok_or_else(|| invalid("data before fmt"))?;
                if channels != 1 || rate != 8000 {
                    return Err(WavError::Unsupported(path.to_path_buf(), format!("{channels} channels at {rate} Hz; need mono 8000 Hz")));
                }
                return match (tag, bits) {
                    (FORMAT_PCM, 16) => Ok(body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()),
                    (FORMAT_ALAW, 8) => Ok(body.iter().map(|b| alaw_to_linear(*b)).collect()),
                    (FORMAT_ULAW, 8) => Ok(body.iter().map(|b| ulaw_to_linear(*b)).collect()),
                    _ => Err(WavError::Unsupported(path.to_path_buf(), format!("format tag {tag} with {bits} bits"))),
                };
            }
            _ => {}
        }
        // Chunks are padded to even sizes (RIFF).
        pos = start.saturating_add(size).saturating_add(size & 1);
    }
    Err(invalid("no data chunk"))
}

/// Reads a prompt file.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, WavError> {
    let bytes = std::fs::read(path).map_err(|e| WavError::Io(path.to_path_buf(), e))?;
    decode_wav(&bytes, path)
}

/// Writes 8 kHz PCM16 WAV; sizes in the header are fixed up by [`WavWriter::finish`].
#[derive(Debug)]
pub struct WavWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    channels: u16,
    data_bytes: u32,
}

impl WavWriter {
    /// Creates the file (parent directories too) and writes a provisional header.
    pub fn create(path: &Path, channels: u16) -> Result<Self, WavError> {
        let io = |e| WavError::Io(path.to_path_buf(), e);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(&header(channels, 0)).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), out: Some(out), channels, data_bytes: 0 })
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends interleaved samples.
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<(), WavError> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        // A RIFF file cannot exceed 4 GiB; stop writing rather than corrupt the header.
        let room = (u32::MAX - 44 - self.data_bytes) as usize;
        let n = buf.len().min(room);
        out.write_all(&buf[..n]).map_err(|e| WavError::Io(self.path.clone(), e))?;
        self.data_bytes += n as u32;
        Ok(())
    }

    /// Appends one stereo frame: caller on the left, agent on the right.
    pub fn write_stereo(&mut self, left: &[i16], right: &[i16]) -> Result<(), WavError> {
        let n = left.len().max(right.len());
        let mut inter = Vec::with_capacity(n * 2);
        for i in 0..n {
            inter.push(left.get(i).copied().unwrap_or(0));
            inter.push(right.get(i).copied().unwrap_or(0));
        }
        self.write_samples(&inter)
    }

    /// Patches the RIFF and data sizes and closes the file.
    pub fn finish(&mut self) -> Result<(), WavError> {
        let Some(mut out) = self.out.take() else {
            return Ok(());
        };
        let io = |e| WavError::Io(self.path.clone(), e);
        out.flush().map_err(io)?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(self.channels, self.data_bytes)).map_err(io)?;
        file.sync_data().map_err(io)
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn header(channels: u16, data_bytes: u32) -> [u8; 44] {
    let rate = 8000u32;
    let block = channels * 2;
    let mut h = [0u8; 44];
    h[..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&FORMAT_PCM.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Encodes mono samples as a complete PCM16 WAV image (for tests and generated prompts).
pub fn encode_mono(samples: &[i16]) -> Vec<u8> {
    let mut out = header(1, (samples.len() * 2) as u32).to_vec();
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sbv-{}-{name}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn stereo_writer_patches_header_and_interleaves() {
        let path = temp("stereo.wav");
        let mut w = WavWriter::create(&path, 2).unwrap();
        w.write_stereo(&[1, 2, 3], &[-1, -2, -3]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 12);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 36 + 12);
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 12);
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2);
        assert_eq!(i16::from_le_bytes([bytes[46], bytes[47]]), -1, "right channel second");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn reads_pcm_and_g711_and_rejects_others() {
        let p = Path::new("x.wav");
        assert_eq!(decode_wav(&encode_mono(&[5, -5]), p).unwrap(), vec![5, -5]);
        let mut alaw = encode_mono(&[]);
        alaw[20] = 6; // format tag
        alaw[34] = 8; // bits
        alaw[40] = 2;
        alaw.extend_from_slice(&[0xd5, 0x55]);
        assert_eq!(decode_wav(&alaw, p).unwrap(), vec![8, -8]);
        let mut stereo = encode_mono(&[1, 2]);
        stereo[22] = 2;
        assert!(matches!(decode_wav(&stereo, p), Err(WavError::Unsupported(..))));
        assert!(decode_wav(b"RIFF\0\0\0\0WAVE", p).is_err());
        assert!(decode_wav(b"junk", p).is_err());
        let mut huge = encode_mono(&[1, 2, 3]);
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_wav(&huge, p).unwrap(), vec![1, 2, 3], "unpatched size tolerated");
    }
}
