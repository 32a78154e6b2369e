//! SMPP 3.4 PDU codec (pure, no sockets): the header, the bind family, submit_sm,
//! deliver_sm, enquire_link, unbind, generic_nack and their responses, with TLVs.
//!
//! Decoding never panics and never trusts a length: `command_length` is bounded by
//! [`MAX_PDU_LEN`], every C-octet string has a maximum size and must be NUL-terminated inside
//! the body, `sm_length` and every TLV length must fit in what is left. A body that does not
//! parse is reported as [`Decoded::Invalid`] with the status to answer it with (SMPP 3.4
//! §4.3: generic_nack for an unknown command id or a bad length), so the session can answer
//! and carry on; only a framing error (a length no PDU can have) ends the connection.

/// Largest PDU accepted (a submit_sm with a 64 KiB message_payload fits).
pub const MAX_PDU_LEN: usize = 70_000;
/// Size of the PDU header: command_length, command_id, command_status, sequence_number.
pub const HEADER_LEN: usize = 16;

/// Command ids (SMPP 3.4 §5.1.2.1).
pub mod cmd {
    /// generic_nack.
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    /// bind_receiver.
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    /// bind_receiver_resp.
    pub const BIND_RECEIVER_RESP: u32 = 0x8000_0001;
    /// bind_transmitter.
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    /// bind_transmitter_resp.
    pub const BIND_TRANSMITTER_RESP: u32 = 0x8000_0002;
    /// submit_sm.
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    /// submit_sm_resp.
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    /// deliver_sm.
    pub const DELIVER_SM: u32 = 0x0000_0005;
    /// deliver_sm_resp.
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    /// unbind.
    pub const UNBIND: u32 = 0x0000_0006;
    /// unbind_resp.
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    /// bind_transceiver.
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    /// bind_transceiver_resp.
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    /// enquire_link.
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    /// enquire_link_resp.
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
}

/// Command status values used here (SMPP 3.4 §5.1.3).
pub mod status {
    /// No error.
    pub const ROK: u32 = 0x00;
    /// Message length is invalid.
    pub const RINVMSGLEN: u32 = 0x01;
    /// Command length is invalid.
    pub const RINVCMDLEN: u32 = 0x02;
    /// Invalid command id.
    pub const RINVCMDID: u32 = 0x03;
    /// Incorrect bind status for the command.
    pub const RINVBNDSTS: u32 = 0x04;
    /// System error.
    pub const RSYSERR: u32 = 0x08;
    /// Invalid destination address.
    pub const RINVDSTADR: u32 = 0x0B;
    /// Bind failed.
    pub const RBINDFAIL: u32 = 0x0D;
    /// Invalid password.
    pub const RINVPASWD: u32 = 0x0E;
    /// Invalid system id.
    pub const RINVSYSID: u32 = 0x0F;
    /// Message queue full.
    pub const RMSGQFUL: u32 = 0x14;
    /// Throttling error (the ESME exceeded its allowed message limits).
    pub const RTHROTTLED: u32 = 0x58;
    /// Invalid optional parameter value / TLV stream.
    pub const RINVOPTPARAMVAL: u32 = 0xC4;
    /// ESME receiver temporary application error (the SMSC should redeliver).
    pub const RX_T_APPN: u32 = 0x64;
    /// ESME receiver permanent application error (the SMSC should not redeliver).
    pub const RX_P_APPN: u32 = 0x65;
    /// Unknown error.
    pub const RUNKNOWNERR: u32 = 0xFF;
}

/// TLV tags used here (SMPP 3.4 §5.3.2).
pub mod tag {
    /// The SMSC message id a delivery receipt is about.
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    /// sar_msg_ref_num (u16).
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    /// sar_total_segments (u8).
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    /// sar_segment_seqnum (u8).
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    /// sc_interface_version (u8).
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    /// network_error_code (3 octets).
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    /// message_payload (up to 64 KiB, replaces short_message).
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    /// message_state (u8) of a receipt.
    pub const MESSAGE_STATE: u16 = 0x0427;
}

/// esm_class bits (SMPP 3.4 §5.2.12).
pub mod esm {
    /// Message type: SMSC delivery receipt.
    pub const DELIVERY_RECEIPT: u8 = 0x04;
    /// Message type: intermediate delivery notification.
    pub const INTERMEDIATE_NOTIFICATION: u8 = 0x20;
    /// Message type mask.
    pub const TYPE_MASK: u8 = 0x3C;
    /// The short message begins with a user data header.
    pub const UDHI: u8 = 0x40;
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total length including the header.
    pub command_length: u32,
    /// Command id.
    pub command_id: u32,
    /// Status (responses).
    pub command_status: u32,
    /// Sequence number correlating a response with its request.
    pub sequence_number: u32,
}

/// An optional parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// Tag.
    pub tag: u16,
    /// Value.
    pub value: Vec<u8>,
}

impl Tlv {
    /// A one-octet TLV.
    pub fn u8(tag: u16, v: u8) -> Tlv {
        Tlv { tag, value: vec![v] }
    }
    /// A two-octet TLV.
    pub fn u16(tag: u16, v: u16) -> Tlv {
        Tlv { tag, value: v.to_be_bytes().to_vec() }
    }
    /// The value as an unsigned integer (1, 2 or 4 octets).
    pub fn as_uint(&self) -> Option<u32> {
        match self.value.len() {
            1 => Some(self.value[0] as u32),
            2 => Some(u16::from_be_bytes([self.value[0], self.value[1]]) as u32),
            4 => Some(u32::from_be_bytes([self.value[0], self.value[1], self.value[2], self.value[3]])),
            _ => None,
        }
    }
    /// The value as a C-octet string (a trailing NUL is dropped).
    pub fn as_cstr(&self) -> String {
        let v = self.value.strip_suffix(&[0]).unwrap_or(&self.value);
        latin1(v)
    }
}

/// A type-of-number / numbering-plan / address triple.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// Type of number (1 = international).
    pub ton: u8,
    /// Numbering plan (1 = E.164).
    pub npi: u8,
    /// The digits (or an alphanumeric sender).
    pub addr: String,
}

/// bind_transmitter / bind_receiver / bind_transceiver body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bind {
    /// system_id (≤ 15 characters).
    pub system_id: String,
    /// password (≤ 8 characters).
    pub password: String,
    /// system_type (≤ 12 characters).
    pub system_type: String,
    /// interface_version (0x34 for SMPP 3.4).
    pub interface_version: u8,
    /// addr_ton.
    pub addr_ton: u8,
    /// addr_npi.
    pub addr_npi: u8,
    /// address_range (≤ 40 characters).
    pub address_range: String,
}

/// The three bind kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindKind {
    /// Send only.
    Transmitter,
    /// Receive only.
    Receiver,
    /// Both.
    Transceiver,
}

/// submit_sm / deliver_sm body (same layout, SMPP 3.4 §4.4.1 and §4.6.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShortMessage {
    /// service_type.
    pub service_type: String,
    /// Source address.
    pub source: Address,
    /// Destination address.
    pub dest: Address,
    /// esm_class (see [`esm`]).
    pub esm_class: u8,
    /// protocol_id.
    pub protocol_id: u8,
    /// priority_flag.
    pub priority_flag: u8,
    /// schedule_delivery_time (empty = immediate).
    pub schedule_delivery_time: String,
    /// validity_period (empty = SMSC default).
    pub validity_period: String,
    /// registered_delivery (1 = receipt on final outcome).
    pub registered_delivery: u8,
    /// replace_if_present_flag.
    pub replace_if_present: u8,
    /// data_coding (0 = SMSC default alphabet, 8 = UCS-2).
    pub data_coding: u8,
    /// sm_default_msg_id.
    pub sm_default_msg_id: u8,
    /// short_message octets (≤ 254).
    pub short_message: Vec<u8>,
    /// Optional parameters.
    pub tlvs: Vec<Tlv>,
}

impl ShortMessage {
    /// The first TLV with this tag.
    pub fn tlv(&self, tag: u16) -> Option<&Tlv> {
        self.tlvs.iter().find(|t| t.tag == tag)
    }
}

/// A PDU body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// A bind request.
    Bind(BindKind, Bind),
    /// A bind response (the SMSC's system_id; TLVs such as sc_interface_version).
    BindResp(BindKind, String, Vec<Tlv>),
    /// submit_sm.
    SubmitSm(ShortMessage),
    /// submit_sm_resp with the SMSC's message id (empty on error).
    SubmitSmResp(String),
    /// deliver_sm.
    DeliverSm(ShortMessage),
    /// deliver_sm_resp.
    DeliverSmResp,
    /// enquire_link.
    EnquireLink,
    /// enquire_link_resp.
    EnquireLinkResp,
    /// unbind.
    Unbind,
    /// unbind_resp.
    UnbindResp,
    /// generic_nack.
    GenericNack,
}

/// A whole PDU: header fields plus body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// command_status.
    pub status: u32,
    /// sequence_number.
    pub seq: u32,
    /// The body.
    pub pdu: Pdu,
}

impl Frame {
    /// A request or response with status 0.
    pub fn new(seq: u32, pdu: Pdu) -> Frame {
        Frame { status: status::ROK, seq, pdu }
    }

    /// The command id of the body.
    pub fn command_id(&self) -> u32 {
        match &self.pdu {
            Pdu::Bind(k, _) => match k {
                BindKind::Transmitter => cmd::BIND_TRANSMITTER,
                BindKind::Receiver => cmd::BIND_RECEIVER,
                BindKind::Transceiver => cmd::BIND_TRANSCEIVER,
            },
            Pdu::BindResp(k, _, _) => match k {
                BindKind::Transmitter => cmd::BIND_TRANSMITTER_RESP,
                BindKind::Receiver => cmd::BIND_RECEIVER_RESP,
                BindKind::Transceiver => cmd::BIND_TRANSCEIVER_RESP,
            },
            Pdu::SubmitSm(_) => cmd::SUBMIT_SM,
            Pdu::SubmitSmResp(_) => cmd::SUBMIT_SM_RESP,
            Pdu::DeliverSm(_) => cmd::DELIVER_SM,
            Pdu::DeliverSmResp => cmd::DELIVER_SM_RESP,
            Pdu::EnquireLink => cmd::ENQUIRE_LINK,
            Pdu::EnquireLinkResp => cmd::ENQUIRE_LINK_RESP,
            Pdu::Unbind => cmd::UNBIND,
            Pdu::UnbindResp => cmd::UNBIND_RESP,
            Pdu::GenericNack => cmd::GENERIC_NACK,
        }
    }

    /// Encodes the PDU (header included).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.command_id().to_be_bytes());
        b.extend_from_slice(&self.status.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        match &self.pdu {
            Pdu::Bind(_, x) => {
                put_cstr(&mut b, &x.system_id, 16);
                put_cstr(&mut b, &x.password, 9);
                put_cstr(&mut b, &x.system_type, 13);
                b.push(x.interface_version);
                b.push(x.addr_ton);
                b.push(x.addr_npi);
                put_cstr(&mut b, &x.address_range, 41);
            }
            Pdu::BindResp(_, system_id, tlvs) => {
                put_cstr(&mut b, system_id, 16);
                put_tlvs(&mut b, tlvs);
            }
            Pdu::SubmitSm(sm) | Pdu::DeliverSm(sm) => {
                put_cstr(&mut b, &sm.service_type, 6);
                b.push(sm.source.ton);
                b.push(sm.source.npi);
                put_cstr(&mut b, &sm.source.addr, 21);
                b.push(sm.dest.ton);
                b.push(sm.dest.npi);
                put_cstr(&mut b, &sm.dest.addr, 21);
                b.extend_from_slice(&[sm.esm_class, sm.protocol_id, sm.priority_flag]);
                put_cstr(&mut b, &sm.schedule_delivery_time, 17);
                put_cstr(&mut b, &sm.validity_period, 17);
                b.extend_from_slice(&[sm.registered_delivery, sm.replace_if_present, sm.data_coding, sm.sm_default_msg_id]);
                let n = sm.short_message.len().min(254);
                b.push(n as u8);
                b.extend_from_slice(&sm.short_message[..n]);
                put_tlvs(&mut b, &sm.tlvs);
            }
            Pdu::SubmitSmResp(id) => put_cstr(&mut b, id, 65),
            // deliver_sm_resp's message_id is unused and set to NULL (§4.6.2).
            Pdu::DeliverSmResp => b.push(0),
            Pdu::EnquireLink | Pdu::EnquireLinkResp | Pdu::Unbind | Pdu::UnbindResp | Pdu::GenericNack => {}
        }
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }
}

/// The stream cannot be framed any more: the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unframeable SMPP stream: command_length {0} outside 16..={MAX_PDU_LEN}")]
pub struct FramingError(pub u32);

/// One decoded PDU, or one whose body could not be read (answered, not fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed PDU.
    Frame(Frame),
    /// A PDU whose header was read but whose body was not.
    Invalid {
        /// Its header.
        header: Header,
        /// The status to answer with.
        status: u32,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Reads one PDU from the front of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the PDU and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Decoded, usize)>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (len as usize) < HEADER_LEN || len as usize > MAX_PDU_LEN {
        return Err(FramingError(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let header = Header { command_length: len as u32, command_id: word(4), command_status: word(8), sequence_number: word(12) };
    let decoded = match decode_body(&header, &buf[HEADER_LEN..len]) {
        Ok(pdu) => Decoded::Frame(Frame { status: header.command_status, seq: header.sequence_number, pdu }),
        Err((status, reason)) => Decoded::Invalid { header, status, reason },
    };
    Ok(Some((decoded, len)))
}

type BodyResult<T> = Result<T, (u32, &'static str)>;

fn decode_body(h: &Header, body: &[u8]) -> BodyResult<Pdu> {
    let mut r = Reader { b: body, at: 0 };
    let is_error_resp = h.command_id & 0x8000_0000 != 0 && h.command_status != status::ROK;
    let pdu = match h.command_id {
        cmd::BIND_TRANSMITTER | cmd::BIND_RECEIVER | cmd::BIND_TRANSCEIVER => {
            let kind = bind_kind(h.command_id);
            let bind = Bind {
                system_id: r.cstr(16)?,
                password: r.cstr(9)?,
                system_type: r.cstr(13)?,
                interface_version: r.u8()?,
                addr_ton: r.u8()?,
                addr_npi: r.u8()?,
                address_range: r.cstr(41)?,
            };
            r.end()?;
            Pdu::Bind(kind, bind)
        }
        cmd::BIND_TRANSMITTER_RESP | cmd::BIND_RECEIVER_RESP | cmd::BIND_TRANSCEIVER_RESP => {
            let kind = bind_kind(h.command_id & 0x7FFF_FFFF);
            // An error response may carry no body at all (§4.1.2).
            if r.rest() == 0 && is_error_resp {
                Pdu::BindResp(kind, String::new(), vec![])
            } else {
                let id = r.cstr(16)?;
                Pdu::BindResp(kind, id, r.tlvs()?)
            }
        }
        cmd::SUBMIT_SM | cmd::DELIVER_SM => {
            let sm = ShortMessage {
                service_type: r.cstr(6)?,
                source: Address { ton: r.u8()?, npi: r.u8()?, addr: r.cstr(21)? },
                dest: Address { ton: r.u8()?, npi: r.u8()?, addr: r.cstr(21)? },
                esm_class: r.u8()?,
                protocol_id: r.u8()?,
                priority_flag: r.u8()?,
                schedule_delivery_time: r.cstr(17)?,
                validity_period: r.cstr(17)?,
                registered_delivery: r.u8()?,
                replace_if_present: r.u8()?,
                data_coding: r.u8()?,
                sm_default_msg_id: r.u8()?,
                short_message: {
                    let n = r.u8()? as usize;
                    if n > 254 {
                        return Err((status::RINVMSGLEN, "sm_length above 254"));
                    }
                    r.take(n).map_err(|_| (status::RINVMSGLEN, "sm_length beyond the PDU"))?.to_vec()
                },
                tlvs: r.tlvs()?,
            };
            if h.command_id == cmd::SUBMIT_SM {
                Pdu::SubmitSm(sm)
            } else {
                Pdu::DeliverSm(sm)
            }
        }
        cmd::SUBMIT_SM_RESP => {
            if r.rest() == 0 {
                Pdu::SubmitSmResp(String::new())
            } else {
                let id = r.cstr(65)?;
                r.end()?;
                Pdu::SubmitSmResp(id)
            }
        }
        cmd::DELIVER_SM_RESP => {
            if r.rest() > 0 {
                r.cstr(65)?;
                r.end()?;
            }
            Pdu::DeliverSmResp
        }
        cmd::ENQUIRE_LINK | cmd::ENQUIRE_LINK_RESP | cmd::UNBIND | cmd::UNBIND_RESP | cmd::GENERIC_NACK => {
            r.end()?;
            match h.command_id {
                cmd::ENQUIRE_LINK => Pdu::EnquireLink,
                cmd::ENQUIRE_LINK_RESP => Pdu::EnquireLinkResp,
                cmd::UNBIND => Pdu::Unbind,
                cmd::UNBIND_RESP => Pdu::UnbindResp,
                _ => Pdu::GenericNack,
            }
        }
        _ => return Err((status::RINVCMDID, "unknown command id")),
    };
    Ok(pdu)
}

fn bind_kind(id: u32) -> BindKind {
    match id {
        cmd::BIND_TRANSMITTER => BindKind::Transmitter,
        cmd::BIND_RECEIVER => BindKind::Receiver,
        _ => BindKind::Transceiver,
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> usize {
        self.b.len() - self.at
    }
    fn take(&mut self, n: usize) -> BodyResult<&'a [u8]> {
        if self.rest() < n {
            return Err((status::RINVCMDLEN, "body shorter than its fields"));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> BodyResult<u8> {
        Ok(self.take(1)?[0])
    }
    /// A C-octet string of at most `max` octets including its NUL.
    fn cstr(&mut self, max: usize) -> BodyResult<String> {
        let window = &self.b[self.at..];
        let limit = window.len().min(max);
        match window[..limit].iter().position(|&c| c == 0) {
            Some(i) => {
                let s = latin1(&window[..i]);
                self.at += i + 1;
                Ok(s)
            }
            None if window.len() < max => Err((status::RINVCMDLEN, "C-octet string runs past the body")),
            None => Err((status::RSYSERR, "C-octet string too long")),
        }
    }
    fn tlvs(&mut self) -> BodyResult<Vec<Tlv>> {
        let mut out = Vec::new();
        while self.rest() > 0 {
            if self.rest() < 4 {
                return Err((status::RINVOPTPARAMVAL, "truncated TLV header"));
            }
            let h = self.take(4)?;
            let tag = u16::from_be_bytes([h[0], h[1]]);
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            let value = self.take(len).map_err(|_| (status::RINVOPTPARAMVAL, "TLV length beyond the PDU"))?.to_vec();
            out.push(Tlv { tag, value });
        }
        Ok(out)
    }
    fn end(&self) -> BodyResult<()> {
        if self.rest() == 0 {
            Ok(())
        } else {
            Err((status::RINVCMDLEN, "bytes after the last field"))
        }
    }
}

/// Octets as Latin-1 characters (lossless for any octet).
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn put_cstr(b: &mut Vec<u8>, s: &str, max: usize) {
    // Characters outside Latin-1 cannot travel in a C-octet string; `?` stands in.
    for c in s.chars().take(max.saturating_sub(1)) {
        b.push(if (c as u32) < 256 { c as u8 } else { b'?' });
    }
    b.push(0);
}

fn put_tlvs(b: &mut Vec<u8>, tlvs: &[Tlv]) {
    for t in tlvs {
        let n = t.value.len().min(u16::MAX as usize);
        b.extend_from_slice(&t.tag.to_be_bytes());
        b.extend_from_slice(&(n as u16).to_be_bytes());
        b.extend_from_slice(&t.value[..n]);
    }
}

/// The generic_nack answering an invalid PDU (or the typed error response when the command
/// is known, so the peer's window slot is freed with the right command id).
pub fn answer_invalid(header: &Header, status_code: u32) -> Option<Vec<u8>> {
    // Responses are never answered (§2.10: a bad response is dropped by the receiver).
    if header.command_id & 0x8000_0000 != 0 {
        return None;
    }
    let mut b = Vec::with_capacity(17);
    let known_resp = match header.command_id {
        cmd::DELIVER_SM | cmd::SUBMIT_SM => Some(header.command_id | 0x8000_0000),
        _ => None,
    };
    let id = known_resp.unwrap_or(cmd::GENERIC_NACK);
    let len: u32 = if known_resp.is_some() { 17 } else { 16 };
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&status_code.to_be_bytes());
    b.extend_from_slice(&header.sequence_number.to_be_bytes());
    if known_resp.is_some() {
        b.push(0);
    }
    Some(b)
}

/// A small xorshift generator for the fuzz loop and tests (no dependency, reproducible).
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Frame> {
        let sm = ShortMessage {
            source: Address { ton: 1, npi: 1, addr: "4915112345678".into() },
            dest: Address { ton: 1, npi: 1, addr: "4930123456".into() },
            esm_class: esm::UDHI,
            registered_delivery: 1,
            data_coding: 8,
            short_message: vec![5, 0, 3, 7, 2, 1, 0, 0x48, 0, 0x69],
            tlvs: vec![Tlv::u16(tag::SAR_MSG_REF_NUM, 513), Tlv { tag: tag::RECEIPTED_MESSAGE_ID, value: b"abc\0".to_vec() }],
            ..Default::default()
        };
        vec![
            Frame::new(
                1,
                Pdu::Bind(
                    BindKind::Transceiver,
                    Bind { system_id: "hub".into(), password: "secret".into(), interface_version: 0x34, ..Default::default() },
                ),
            ),
            Frame::new(1, Pdu::BindResp(BindKind::Transceiver, "smsc".into(), vec![Tlv::u8(tag::SC_INTERFACE_VERSION, 0x34)])),
            Frame::new(2, Pdu::SubmitSm(sm.clone())),
            Frame::new(2, Pdu::SubmitSmResp("1A2B3C".into())),
            Frame::new(3, Pdu::DeliverSm(sm)),
            Frame::new(3, Pdu::DeliverSmResp),
            Frame::new(4, Pdu::EnquireLink),
            Frame::new(4, Pdu::EnquireLinkResp),
            Frame::new(5, Pdu::Unbind),
            Frame::new(5, Pdu::UnbindResp),
            Frame { status: status::RINVCMDID, seq: 6, pdu: Pdu::GenericNack },
        ]
    }

    #[test]
    fn every_pdu_round_trips() {
        for f in samples() {
            let bytes = f.encode();
            let (d, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(d, Decoded::Frame(f.clone()), "{f:?}");
            // Any prefix asks for more bytes, never errs.
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn known_bytes_of_enquire_link_and_error_submit_resp() {
        assert_eq!(Frame::new(7, Pdu::EnquireLink).encode(), vec![0, 0, 0, 16, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 7]);
        // An error submit_sm_resp may have no body.
        let bare = [0, 0, 0, 16, 0x80, 0, 0, 4, 0, 0, 0, 0x58, 0, 0, 0, 9];
        let (d, _) = decode(&bare).unwrap().unwrap();
        assert_eq!(d, Decoded::Frame(Frame { status: status::RTHROTTLED, seq: 9, pdu: Pdu::SubmitSmResp(String::new()) }));
    }

    #[test]
    fn lying_lengths_and_unknown_commands_are_answered_not_fatal() {
        // command_length below the header and above the maximum: framing lost.
        assert_eq!(decode(&[0, 0, 0, 3, 1, 2, 3]), Err(FramingError(3)));
        assert!(decode(&[0, 0x10, 0, 0, 0]).is_err());
        // Unknown command: generic_nack with ESME_RINVCMDID.
        let unknown = [0, 0, 0, 16, 0, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 42];
        let (d, used) = decode(&unknown).unwrap().unwrap();
        assert_eq!(used, 16);
        let Decoded::Invalid { header, status: st, .. } = d else { panic!("{d:?}") };
        assert_eq!(st, status::RINVCMDID);
        let nack = answer_invalid(&header, st).unwrap();
        assert_eq!(decode(&nack).unwrap().unwrap().0, Decoded::Frame(Frame { status: st, seq: 42, pdu: Pdu::GenericNack }));
        // A deliver_sm whose TLV claims more than is there: typed error response.
        let mut sm = samples()[4].encode();
        let n = sm.len();
        sm[n - 5] = 0xFF; // receipted_message_id length high byte
        let (d, _) = decode(&sm).unwrap().unwrap();
        let Decoded::Invalid { header, status: st, .. } = d else { panic!("{d:?}") };
        assert_eq!(st, status::RINVOPTPARAMVAL);
        let resp = answer_invalid(&header, st).unwrap();
        let (r, _) = decode(&resp).unwrap().unwrap();
        assert_eq!(r, Decoded::Frame(Frame { status: st, seq: 3, pdu: Pdu::DeliverSmResp }));
        // A truncated TLV header.
        let mut t = samples()[2].encode();
        t.extend_from_slice(&[0x04, 0x24]);
        let l = t.len() as u32;
        t[..4].copy_from_slice(&l.to_be_bytes());
        assert!(matches!(decode(&t).unwrap().unwrap().0, Decoded::Invalid { status: status::RINVOPTPARAMVAL, .. }));
    }

    /// Iterations of the decoder fuzz loop; `SMS_FUZZ_ITERS` overrides (default 1,000,000).
    fn fuzz_iterations() -> u64 {
        std::env::var("SMS_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
    }

    /// A bounded fuzz loop over the decoder: random bytes, and valid PDUs with bytes
    /// flipped, lengths rewritten, cut short or extended. Decoding must never panic; what
    /// it returns must be consistent (a frame uses exactly `command_length` bytes, an
    /// invalid PDU gets an answer only when it is a request).
    #[test]
    fn decoder_fuzz_loop() {
        let seeds: Vec<Vec<u8>> = samples().iter().map(|f| f.encode()).collect();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut buf = Vec::with_capacity(512);
        let (mut frames, mut invalid, mut fatal, mut short) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..fuzz_iterations() {
            buf.clear();
            if i % 4 == 0 {
                let n = 4 + rng.below(120);
                let len = (HEADER_LEN + rng.below(n)) as u32;
                buf.extend_from_slice(&len.to_be_bytes());
                for _ in 0..n {
                    buf.push(rng.next() as u8);
                }
            } else {
                buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
                for _ in 0..1 + rng.below(4) {
                    match rng.below(5) {
                        0 | 1 if !buf.is_empty() => {
                            let at = rng.below(buf.len());
                            buf[at] = rng.next() as u8;
                        }
                        2 => {
                            let cut = rng.below(buf.len() + 1);
                            buf.truncate(cut);
                        }
                        3 => {
                            for _ in 0..rng.below(16) {
                                buf.push(rng.next() as u8);
                            }
                        }
                        _ if buf.len() >= 4 => {
                            // Rewrite command_length to something near the real one.
                            let l = (buf.len() as i64 + rng.below(9) as i64 - 4).max(0) as u32;
                            buf[..4].copy_from_slice(&l.to_be_bytes());
                        }
                        _ => {}
                    }
                }
            }
            match decode(&buf) {
                Ok(Some((d, used))) => {
                    assert!(used <= buf.len() && used >= HEADER_LEN);
                    match d {
                        Decoded::Frame(f) => {
                            frames += 1;
                            // Re-encoding a decoded frame decodes to the same frame.
                            let again = f.encode();
                            assert_eq!(decode(&again).unwrap().unwrap().0, Decoded::Frame(f));
                        }
                        Decoded::Invalid { header, status: st, .. } => {
                            invalid += 1;
                            if let Some(a) = answer_invalid(&header, st) {
                                assert!(matches!(decode(&a), Ok(Some((Decoded::Frame(_), _)))));
                            }
                        }
                    }
                }
                Ok(None) => short += 1,
                Err(_) => fatal += 1,
            }
        }
        assert!(frames > 0 && invalid > 0 && fatal > 0 && short > 0, "{frames} {invalid} {fatal} {short}");
    }
}
