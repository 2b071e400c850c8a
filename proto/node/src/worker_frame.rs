//! Framing on a node's pool socket (agent ↔ pool worker,
//! `docs/node-contract.md` §9): a 4-byte big-endian length, then one
//! protobuf message (`mpctl.v1.WorkerToAgent` or `AgentToWorker`). Lengths are bounded by [`MAX_FRAME`] on both sides.

use prost::Message;

/// Largest frame either side accepts: a batch of tasks or one result.
pub const MAX_FRAME: usize = 16 << 20;

/// The bytes of one frame carrying `msg`.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut out)
        .expect("a Vec grows to fit any message");
    out
}

/// The body length announced by a frame header, if it is within bounds.
pub fn body_len(header: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "a frame of {len} bytes on the pool socket; the limit is {MAX_FRAME}"
        ));
    }
    Ok(len)
}

/// Reads one frame from a blocking reader; `Ok(None)` at a clean end of stream.
pub fn read_blocking<M: Message + Default>(
    r: &mut impl std::io::Read,
) -> std::io::Result<Option<M>> {
    use std::io::{Error, ErrorKind};
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = body_len(header).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    M::decode(body.as_slice())
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Probe {
        #[prost(string, tag = "1")]
        key: String,
    }

    #[test]
    fn a_frame_reads_back_and_an_oversized_header_is_refused() {
        let msg = Probe { key: "k".into() };
        let bytes = encode(&msg);
        let mut r = bytes.as_slice();
        assert_eq!(read_blocking::<Probe>(&mut r).unwrap(), Some(msg));
        assert_eq!(read_blocking::<Probe>(&mut r).unwrap(), None);
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(body_len(huge).is_err());
        let mut r = &huge[..];
        assert_eq!(
            read_blocking::<Probe>(&mut r).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
