//! Reads newline-terminated JSON messages from an async stream without ever
//! buffering more than [`MAX_LINE`] bytes of one, so a backend cannot make
//! the daemon allocate without bound.

use protocol::control::{ControlError, MAX_LINE};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// A bounded line reader. Cancel-safe: a partly read line stays in `self`
/// when the future is dropped, so it can sit in a `select!`.
pub struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader { inner, line: Vec::new() }
    }

    /// The next line, newline included.
    pub async fn next_line(&mut self) -> Result<Vec<u8>, ControlError> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Err(ControlError::Closed);
            }
            let (n, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + n > MAX_LINE {
                return Err(ControlError::TooLong);
            }
            self.line.extend_from_slice(&buf[..n]);
            self.inner.consume(n);
            if done {
                return Ok(std::mem::take(&mut self.line));
            }
        }
    }

    /// The next line, decoded.
    pub async fn next_msg<T: DeserializeOwned>(&mut self) -> Result<T, ControlError> {
        let line = self.next_line().await?;
        Ok(serde_json::from_slice(&line)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::control::BackendMsg;
    use tokio::io::BufReader;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        rt().block_on(async {
            let data = b"{\"type\":\"demand\"}\n{\"type\":\"charge\",\"gpu_ns\":5}\n";
            // A 3-byte buffer makes every line span many reads.
            let mut r = LineReader::new(BufReader::with_capacity(3, &data[..]));
            assert_eq!(r.next_msg::<BackendMsg>().await.unwrap(), BackendMsg::Demand);
            assert_eq!(r.next_msg::<BackendMsg>().await.unwrap(), BackendMsg::Charge { gpu_ns: 5 });
            assert!(matches!(r.next_msg::<BackendMsg>().await, Err(ControlError::Closed)));
        });
    }

    #[test]
    fn a_line_of_exactly_max_line_passes_and_one_more_byte_fails() {
        rt().block_on(async {
            let mut ok = vec![b' '; MAX_LINE - 1];
            ok.push(b'\n');
            let mut r = LineReader::new(BufReader::new(&ok[..]));
            assert_eq!(r.next_line().await.unwrap().len(), MAX_LINE);

            let long = vec![b' '; MAX_LINE + 1];
            let mut r = LineReader::new(BufReader::with_capacity(1000, &long[..]));
            assert!(matches!(r.next_line().await, Err(ControlError::TooLong)));
        });
    }

    #[test]
    fn garbage_is_malformed() {
        rt().block_on(async {
            let mut r = LineReader::new(BufReader::new(&b"not json\n"[..]));
            assert!(matches!(r.next_msg::<BackendMsg>().await, Err(ControlError::Malformed(_))));
        });
    }
}
