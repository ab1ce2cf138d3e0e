//! The admin API's bearer token: read from a file, or generated into it
//! (32 random bytes as hex, mode 0600) when the file does not exist yet.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("token file {0} is empty")]
    Empty(String),
}

/// The token in `path`, created first if missing.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let err = |source| TokenError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let token = s.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty(path.display().to_string()));
            }
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(err)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
    tracing::info!(path = %path.display(), "generated the admin API token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_token_is_generated_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("gpuvisord-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin.token");
        let t = load_or_create(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), t);
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(load_or_create(&path), Err(TokenError::Empty(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
