//! Erasure of a customer's personal data across modules (GDPR art. 17). The CRM owns the
//! erase request and the customer's own rows; every channel adapter scrubs what it keeps
//! about the same person (chat visitor details and attachments, call recordings) through
//! [`PersonalDataEraser`], inside the CRM's transaction. Files are removed only after that
//! transaction commits, so a failed erase never leaves rows pointing at deleted files.

use async_trait::async_trait;
use sqlx::PgConnection;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

use crate::{CoreResult, Hub};

/// What one module erased.
#[derive(Debug, Default)]
pub struct Erased {
    /// Rows scrubbed or deleted (for the audit entry; no personal data).
    pub rows: u64,
    /// Files to delete once the erase transaction has committed.
    pub files: Vec<crate::files::StoredFile>,
}

/// A module's part of an erase: scrubs the personal data it stores about a customer.
#[async_trait]
pub trait PersonalDataEraser: Send + Sync + 'static {
    /// A short name for the audit entry (`"chat"`, `"voice"`).
    fn scope(&self) -> &str;
    /// Scrubs, in the caller's transaction, every row this module keeps about the
    /// customer's interactions (they still exist, with their customer id, when this runs)
    /// and returns the files to delete after commit.
    async fn erase_customer(&self, hub: &Hub, tx: &mut PgConnection, customer_id: Uuid) -> CoreResult<Erased>;
}

impl Hub {
    /// The erasers of every configured adapter.
    pub fn personal_data_erasers(&self) -> Vec<Arc<dyn PersonalDataEraser>> {
        let adapters = self.0.adapters.read().map(|g| g.clone()).unwrap_or_default();
        adapters.iter().filter_map(|a| a.personal_data_eraser()).collect()
    }
}

/// Deletes files whose rows an erase removed (after commit), from whichever store holds
/// them. A file already gone counts as deleted; other failures are logged (by store and
/// key, which hold no personal data) and counted.
pub async fn remove_files(files: &[crate::files::StoredFile]) -> usize {
    let mut failed = 0;
    for f in files {
        if let Err(error) = f.store.delete(&f.key).await {
            failed += 1;
            tracing::error!(%error, store = ?f.store, key = %f.key, "An erased customer's file could not be deleted.");
        }
    }
    failed
}

/// Whether `path` lies inside `dir` (both made absolute against the working directory;
/// `..` components are refused), so a stored path can never name a file elsewhere.
pub fn is_inside(dir: &Path, path: &Path) -> bool {
    use std::path::Component;
    if path.components().any(|c| matches!(c, Component::ParentDir)) || dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return false;
    }
    let abs = |p: &Path| if p.is_absolute() { Some(p.to_path_buf()) } else { std::env::current_dir().ok().map(|c| c.join(p)) };
    match (abs(dir), abs(path)) {
        (Some(d), Some(p)) => p.starts_with(&d) && p != d,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_refuses_escapes() {
        assert!(is_inside(Path::new("/data/rec"), Path::new("/data/rec/a.wav")));
        assert!(!is_inside(Path::new("/data/rec"), Path::new("/data/rec/../x")));
        assert!(!is_inside(Path::new("/data/rec"), Path::new("/data/recx/a.wav")));
        assert!(!is_inside(Path::new("/data/rec"), Path::new("/data/rec")));
        assert!(is_inside(Path::new("data/rec"), Path::new("data/rec/b.wav")));
    }
}
