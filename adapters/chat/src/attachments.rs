//! Attachment checks and storage: the declared content type must be on the allow list
//! and agree with the file's leading bytes; files are stored content-addressed under
//! their SHA-256 in the hub's file store (the attachment directory, or the `attachments/`
//! prefix of an S3 bucket; a reader never sees a partial file).

use axum::body::Bytes;
use sha2::{Digest, Sha256};
use switchboard_core::files::FileStore;
use switchboard_core::CoreResult;

/// The content type a file's leading bytes prove, for the types we can recognise.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// Checks that the content matches the declared type (a PNG must be a PNG; `text/plain`
/// must be UTF-8 without NUL; a file that looks like a recognised type must declare it).
pub fn check_content(declared: &str, bytes: &[u8]) -> Result<(), String> {
    let declared = declared.to_ascii_lowercase();
    let sniffed = sniff(bytes);
    match (declared.as_str(), sniffed) {
        ("text/plain", None) => {
            let s = std::str::from_utf8(bytes).map_err(|_| "text/plain attachments must be UTF-8".to_string())?;
            if s.contains('\0') {
                return Err("text/plain attachments must not contain NUL".into());
            }
            Ok(())
        }
        (d, Some(s)) if d == s => Ok(()),
        (d, Some(s)) => Err(format!("the file is {s}, not {d}")),
        ("image/png" | "image/jpeg" | "image/gif" | "image/webp" | "application/pdf", None) => {
            Err(format!("the file content is not {declared}"))
        }
        // Other allowed types cannot be verified here; the allow list is the operator's call.
        _ => Ok(()),
    }
}

/// The bare `type/subtype` of a Content-Type header value, lowercased.
pub fn bare_content_type(header: &str) -> String {
    header.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// A safe display file name: last path component, no control or quote characters,
/// at most 200 bytes; `attachment` when nothing is left.
pub fn sanitize_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out = String::new();
    for c in last.chars().filter(|c| !c.is_control() && !matches!(c, '"' | '\'' | '<' | '>' | '`')) {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    let out = out.trim().trim_start_matches('.').to_string();
    if out.is_empty() {
        "attachment".to_string()
    } else {
        out
    }
}

/// An ASCII-only version for the Content-Disposition header.
pub fn ascii_filename(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect();
    s.replace(['"', '\\'], "_")
}

/// SHA-256 hex of the content.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores the content under its SHA-256 unless it is already there (content-addressed:
/// the same file uploaded twice is stored once).
pub async fn store(files: &dyn FileStore, sha256: &str, bytes: Bytes) -> CoreResult<()> {
    if files.exists(sha256).await? {
        return Ok(());
    }
    files.put(sha256, bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_must_match_the_declared_type() {
        let png = b"\x89PNG\r\n\x1a\n....";
        assert!(check_content("image/png", png).is_ok());
        assert!(check_content("image/jpeg", png).unwrap_err().contains("image/png"));
        assert!(check_content("text/plain", png).is_err());
        assert!(check_content("image/png", b"<svg onload=alert(1)>").is_err());
        assert!(check_content("text/plain", "héllo".as_bytes()).is_ok());
        assert!(check_content("text/plain", &[0xff, 0xfe]).is_err());
        assert!(check_content("application/pdf", b"%PDF-1.7 ...").is_ok());
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    }

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\x\\a\"b<c>.png"), "abc.png");
        assert_eq!(sanitize_filename("..."), "attachment");
        assert_eq!(sanitize_filename(&"é".repeat(300)).len(), 200);
        assert_eq!(ascii_filename("naïve \"x\".txt"), "na_ve _x_.txt");
        assert_eq!(bare_content_type("Image/PNG; charset=x"), "image/png");
    }

    #[tokio::test]
    async fn store_is_content_addressed() {
        let dir = std::env::temp_dir().join(format!("sb-chat-att-{}", uuid::Uuid::new_v4().simple()));
        let data = b"hello attachment";
        let sha = sha256_hex(data);
        assert_eq!(sha, "7fa36b95d5c98859ed72b4787f3c28b29eaa103970786755c9711cbb19be631c");
        let files = switchboard_core::files::DirStore::new(&dir);
        store(&files, &sha, Bytes::from_static(data)).await.unwrap();
        assert_eq!(std::fs::read(dir.join(&sha)).unwrap(), data);
        // Second store is a no-op; no temporary files remain.
        store(&files, &sha, Bytes::from_static(data)).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
