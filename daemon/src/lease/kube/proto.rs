//! The Node list as protobuf, decoded while it arrives. weftd lists every
//! Node once at start (and after a watch expired); as JSON the API server
//! spends most of that time encoding ~10 KB per Node and weftd most of its
//! own parsing it. Protobuf is what client-go (and so flanneld) asks for;
//! here only the fields weft reads are decoded, straight from the wire,
//! one Node at a time as the body streams in, so memory never holds more
//! than one Node and one network read.
//!
//! The body is the `k8s\0` magic and a `runtime.Unknown` whose field 2
//! (`raw`) is the `NodeList`: field 1 its `ListMeta` (resourceVersion 2,
//! continue 3), field 2 each Node (metadata 1, spec 2, status 3). Field
//! numbers are Kubernetes' `generated.proto`, stable since v1.0.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::node::{SlimAddress, SlimNode, SlimSpec, SlimStatus};

/// The content type the API server answers protobuf in.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What is wrong with a protobuf answer, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API server's protobuf Node list: {0}")]
pub struct ProtoError(pub String);

fn bad(what: impl Into<String>) -> ProtoError {
    ProtoError(what.into())
}

/// A list's own metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMeta {
    pub resource_version: String,
    pub continue_: String,
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the 4 bytes of magic.
    Magic,
    /// Among the `runtime.Unknown` envelope's fields.
    Envelope,
    /// Inside the NodeList, with this many of its bytes still to come.
    List { left: u64 },
}

/// Decodes a protobuf Node list fed to it in pieces of any size.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    at: usize,
    state: State,
    seen_list: bool,
    meta: ListMeta,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            at: 0,
            state: State::Magic,
            seen_list: false,
            meta: ListMeta::default(),
        }
    }

    /// Takes the next piece of the body; every Node it completes goes to
    /// `each`.
    pub fn feed(&mut self, data: &[u8], each: &mut impl FnMut(SlimNode)) -> Result<(), ProtoError> {
        // Drop what is consumed before growing the buffer.
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 64 * 1024 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(data);
        loop {
            let rest = &self.buf[self.at..];
            match self.state {
                State::Magic => {
                    if rest.len() < 4 {
                        return Ok(());
                    }
                    if &rest[..4] != b"k8s\0" {
                        return Err(bad("the body does not start with the k8s\\0 magic"));
                    }
                    self.at += 4;
                    self.state = State::Envelope;
                }
                State::Envelope => {
                    let Some((key, n)) = varint(rest)? else {
                        return Ok(());
                    };
                    if key >> 3 == 2 && key & 7 == 2 {
                        // `raw`: the NodeList, entered without waiting for all of it.
                        let Some((len, m)) = varint(&rest[n..])? else {
                            return Ok(());
                        };
                        self.at += n + m;
                        self.seen_list = true;
                        self.state = State::List { left: len };
                        continue;
                    }
                    let Some(f) = field(rest)? else {
                        return Ok(());
                    };
                    self.at += f.len;
                }
                State::List { left: 0 } => self.state = State::Envelope,
                State::List { left } => {
                    let Some(f) = field(rest)? else {
                        return Ok(());
                    };
                    let left = left
                        .checked_sub(f.len as u64)
                        .ok_or_else(|| bad("a field runs past the end of the NodeList"))?;
                    match (f.number, f.body) {
                        (1, Some(b)) => self.meta = list_meta(&rest[b.0..b.1])?,
                        (2, Some(b)) => each(node(&rest[b.0..b.1])?),
                        (2, None) => return Err(bad("items: not a message")),
                        _ => {}
                    }
                    self.at += f.len;
                    self.state = State::List { left };
                }
            }
        }
    }

    /// The list's metadata, once the whole body was fed.
    pub fn finish(self) -> Result<ListMeta, ProtoError> {
        match self.state {
            State::Envelope if self.at == self.buf.len() && self.seen_list => Ok(self.meta),
            State::Envelope if !self.seen_list => {
                Err(bad("the envelope holds no NodeList (field raw)"))
            }
            _ => Err(bad("the body ends in the middle of a field")),
        }
    }
}

/// One field at the start of a buffer: its number, its whole length, and
/// where a length-delimited field's body is (or a varint's value).
struct Field {
    number: u64,
    len: usize,
    body: Option<(usize, usize)>,
    int: Option<u64>,
}

/// A varint at the start of `b` (`None`: more bytes needed).
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, ProtoError> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        if i == 10 {
            return Err(bad("a varint longer than 10 bytes"));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err(bad("a varint longer than 10 bytes"));
    }
    Ok(None)
}

/// The whole field at the start of `b` (`None`: more bytes needed).
fn field(b: &[u8]) -> Result<Option<Field>, ProtoError> {
    let Some((key, n)) = varint(b)? else {
        return Ok(None);
    };
    let number = key >> 3;
    let fixed = |size: usize| {
        Ok((b.len() >= n + size).then_some(Field {
            number,
            len: n + size,
            body: None,
            int: None,
        }))
    };
    match key & 7 {
        0 => Ok(varint(&b[n..])?.map(|(v, m)| Field {
            number,
            len: n + m,
            body: None,
            int: Some(v),
        })),
        1 => fixed(8),
        5 => fixed(4),
        2 => {
            let Some((len, m)) = varint(&b[n..])? else {
                return Ok(None);
            };
            let start = n + m;
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .ok_or_else(|| bad(format!("field {number}: a length of {len} bytes")))?;
            Ok((b.len() >= end).then_some(Field {
                number,
                len: end,
                body: Some((start, end)),
                int: None,
            }))
        }
        w => Err(bad(format!(
            "field {number}: wire type {w} is not one weft reads"
        ))),
    }
}

/// The fields of one complete message, as (number, body or varint value).
fn fields<'a>(mut b: &'a [u8], what: &str) -> Result<Vec<(u64, Value<'a>)>, ProtoError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let f = field(b)?.ok_or_else(|| bad(format!("{what}: a field is cut short")))?;
        let v = match (f.body, f.int) {
            (Some((s, e)), _) => Value::Bytes(&b[s..e]),
            (None, Some(i)) => Value::Int(i),
            (None, None) => Value::Other,
        };
        out.push((f.number, v));
        b = &b[f.len..];
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Bytes(&'a [u8]),
    Int(u64),
    Other,
}

fn text(v: Value<'_>, what: &str) -> Result<String, ProtoError> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| bad(format!("{what}: not UTF-8"))),
        _ => Err(bad(format!("{what}: not a string"))),
    }
}

fn message<'a>(v: Value<'a>, what: &str) -> Result<&'a [u8], ProtoError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(bad(format!("{what}: not a message"))),
    }
}

fn list_meta(b: &[u8]) -> Result<ListMeta, ProtoError> {
    let mut meta = ListMeta::default();
    for (n, v) in fields(b, "NodeList metadata")? {
        match n {
            2 => meta.resource_version = text(v, "NodeList metadata.resourceVersion")?,
            3 => meta.continue_ = text(v, "NodeList metadata.continue")?,
            _ => {}
        }
    }
    Ok(meta)
}

/// One Node: the fields weft reads, the rest skipped.
pub fn node(b: &[u8]) -> Result<SlimNode, ProtoError> {
    let mut n = SlimNode::default();
    for (num, v) in fields(b, "Node")? {
        match num {
            1 => n.metadata = object_meta(message(v, "Node metadata")?)?,
            2 => n.spec = spec(message(v, "Node spec")?)?,
            3 => n.status = status(message(v, "Node status")?)?,
            _ => {}
        }
    }
    Ok(n)
}

fn object_meta(b: &[u8]) -> Result<ObjectMeta, ProtoError> {
    let mut m = ObjectMeta::default();
    for (n, v) in fields(b, "Node metadata")? {
        match n {
            1 => m.name = Some(text(v, "metadata.name")?),
            5 => m.uid = Some(text(v, "metadata.uid")?),
            6 => m.resource_version = Some(text(v, "metadata.resourceVersion")?),
            8 => m.creation_timestamp = Some(time(message(v, "metadata.creationTimestamp")?)?),
            9 => m.deletion_timestamp = Some(time(message(v, "metadata.deletionTimestamp")?)?),
            12 => {
                let (k, val) = entry(message(v, "metadata.annotations")?)?;
                m.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, val);
            }
            _ => {}
        }
    }
    Ok(m)
}

/// A map entry: key 1, value 2.
fn entry(b: &[u8]) -> Result<(String, String), ProtoError> {
    let (mut k, mut val) = (String::new(), String::new());
    for (n, v) in fields(b, "metadata.annotations")? {
        match n {
            1 => k = text(v, "metadata.annotations key")?,
            2 => val = text(v, &format!("metadata.annotations[{k}]"))?,
            _ => {}
        }
    }
    Ok((k, val))
}

/// A `meta.v1.Time`: seconds 1, nanos 2.
fn time(b: &[u8]) -> Result<Time, ProtoError> {
    let (mut secs, mut nanos) = (0i64, 0i32);
    for (n, v) in fields(b, "a timestamp")? {
        match (n, v) {
            (1, Value::Int(s)) => secs = s as i64,
            (2, Value::Int(ns)) => nanos = ns as i32,
            _ => {}
        }
    }
    k8s_openapi::jiff::Timestamp::new(secs, nanos)
        .map(Time)
        .map_err(|_| bad(format!("a timestamp of {secs} s is out of range")))
}

fn spec(b: &[u8]) -> Result<SlimSpec, ProtoError> {
    let mut s = SlimSpec::default();
    for (n, v) in fields(b, "Node spec")? {
        match n {
            1 => s.pod_cidr = Some(text(v, "spec.podCIDR")?),
            7 => s
                .pod_cidrs
                .get_or_insert_with(Vec::new)
                .push(text(v, "spec.podCIDRs")?),
            _ => {}
        }
    }
    Ok(s)
}

fn status(b: &[u8]) -> Result<SlimStatus, ProtoError> {
    let mut s = SlimStatus::default();
    for (n, v) in fields(b, "Node status")? {
        if n == 5 {
            let mut a = SlimAddress::default();
            for (n, v) in fields(message(v, "status.addresses")?, "status.addresses")? {
                match n {
                    1 => a.type_ = text(v, "status.addresses.type")?,
                    2 => a.address = text(v, "status.addresses.address")?,
                    _ => {}
                }
            }
            s.addresses.push(a);
        }
    }
    Ok(s)
}

/// The `raw` object inside a whole answer's `runtime.Unknown` envelope.
fn raw(body: &[u8]) -> Option<&[u8]> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    fields(unknown, "the envelope")
        .ok()?
        .into_iter()
        .find_map(|(n, v)| match (n, v) {
            (2, Value::Bytes(b)) => Some(b),
            _ => None,
        })
}

/// The message of a protobuf `Status` (an error answer), if it is one.
pub fn status_message(body: &[u8]) -> Option<String> {
    fields(raw(body)?, "Status")
        .ok()?
        .into_iter()
        .find_map(|(n, v)| (n == 3).then(|| text(v, "message").ok()).flatten())
}

/// A whole protobuf Node list's own metadata, its Nodes left undecoded
/// (for a page's continue token).
pub fn list_meta_of(body: &[u8]) -> Result<ListMeta, ProtoError> {
    let raw = raw(body).ok_or_else(|| bad("no NodeList in the envelope"))?;
    match fields(raw, "NodeList")?.into_iter().find(|(n, _)| *n == 1) {
        Some((_, v)) => list_meta(message(v, "NodeList metadata")?),
        None => Ok(ListMeta::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf encoding, for the tests: a key and a length-delimited body.
    fn ld(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = enc(number << 3 | 2);
        out.extend(enc(body.len() as u64));
        out.extend_from_slice(body);
        out
    }

    fn int(number: u64, v: u64) -> Vec<u8> {
        let mut out = enc(number << 3);
        out.extend(enc(v));
        out
    }

    fn enc(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn node_bytes(name: &str, cidr: &str, ip: &str) -> Vec<u8> {
        let mut meta = ld(1, name.as_bytes());
        meta.extend(ld(6, b"17"));
        meta.extend(ld(8, &[int(1, 1_767_323_045), int(2, 0)].concat()));
        meta.extend(ld(11, &[ld(1, b"label"), ld(2, b"x")].concat()));
        meta.extend(ld(
            12,
            &[
                ld(1, b"flannel.alpha.coreos.com/public-ip"),
                ld(2, ip.as_bytes()),
            ]
            .concat(),
        ));
        meta.extend(ld(12, &[ld(1, b"a"), ld(2, b"b")].concat()));
        // managedFields: skipped.
        meta.extend(ld(17, &[0u8; 300]));
        let spec = [
            ld(1, cidr.as_bytes()),
            ld(7, cidr.as_bytes()),
            ld(7, b"fd00::/64"),
        ]
        .concat();
        let addr = |t: &str, a: &str| ld(5, &[ld(1, t.as_bytes()), ld(2, a.as_bytes())].concat());
        let status = [
            ld(4, b"conditions are skipped"),
            addr("InternalIP", ip),
            addr("Hostname", name),
            // fixed32 and fixed64 fields are skipped too.
            vec![6 << 3 | 5, 1, 2, 3, 4],
            vec![7 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8],
        ]
        .concat();
        [ld(1, &meta), ld(2, &spec), ld(3, &status)].concat()
    }

    fn list_bytes(nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut list = ld(1, &[ld(2, b"4711"), ld(3, b"")].concat());
        for n in nodes {
            list.extend(ld(2, n));
        }
        let type_meta = ld(1, &[ld(1, b"v1"), ld(2, b"NodeList")].concat());
        [b"k8s\0".to_vec(), type_meta, ld(2, &list), ld(4, b"")].concat()
    }

    fn decode_in_pieces(
        body: &[u8],
        piece: usize,
    ) -> Result<(Vec<SlimNode>, ListMeta), ProtoError> {
        let mut d = Decoder::new();
        let mut nodes = Vec::new();
        for chunk in body.chunks(piece) {
            d.feed(chunk, &mut |n| nodes.push(n))?;
        }
        Ok((nodes, d.finish()?))
    }

    #[test]
    fn a_list_decodes_the_same_fed_whole_or_a_byte_at_a_time() {
        let body = list_bytes(&[
            node_bytes("n1", "10.244.1.0/24", "198.51.100.11"),
            node_bytes("n2", "10.244.2.0/24", "198.51.100.12"),
        ]);
        for piece in [body.len(), 1, 7, 100] {
            let (nodes, meta) = decode_in_pieces(&body, piece).unwrap();
            assert_eq!(meta.resource_version, "4711");
            assert_eq!(nodes.len(), 2);
            let n = &nodes[1];
            assert_eq!(n.name(), "n2");
            assert_eq!(n.pod_cidrs(), vec!["10.244.2.0/24", "fd00::/64"]);
            assert_eq!(n.internal_ips().collect::<Vec<_>>(), vec!["198.51.100.12"]);
            assert_eq!(
                n.annotation("flannel.alpha.coreos.com/public-ip"),
                Some("198.51.100.12")
            );
            assert_eq!(n.annotation("a"), Some("b"));
            // The same text as a JSON Node's "2026-01-02T03:04:05Z".
            assert_eq!(n.created(), "2026-01-02T03:04:05Z");
            assert_eq!(n.metadata.labels, None);
        }
    }

    #[test]
    fn a_cut_or_garbled_body_is_an_error_naming_what_is_wrong() {
        let body = list_bytes(&[node_bytes("n1", "10.244.1.0/24", "198.51.100.11")]);
        let cut = decode_in_pieces(&body[..body.len() - 10], 5).unwrap_err();
        assert!(cut.0.contains("ends in the middle"), "{cut}");
        let err = decode_in_pieces(b"{\"kind\":\"NodeList\"}", 4).unwrap_err();
        assert!(err.0.contains("magic"), "{err}");
        // A name that is not UTF-8.
        let mut bad_node = ld(1, &ld(1, &[0xff, 0xfe]));
        bad_node.extend(ld(2, b""));
        let err = decode_in_pieces(&list_bytes(&[bad_node]), 3).unwrap_err();
        assert!(err.0.contains("metadata.name: not UTF-8"), "{err}");
        // An endless varint.
        let err = decode_in_pieces(&[b"k8s\0".as_slice(), &[0xff; 12]].concat(), 16).unwrap_err();
        assert!(err.0.contains("varint"), "{err}");
        let none = decode_in_pieces(b"k8s\0", 4).unwrap_err();
        assert!(none.0.contains("no NodeList"), "{none}");
    }

    #[test]
    fn an_error_status_gives_its_message() {
        let status = [ld(2, b"Failure"), ld(3, b"nodes is forbidden"), int(6, 403)].concat();
        let body = [b"k8s\0".to_vec(), ld(2, &status)].concat();
        assert_eq!(status_message(&body).as_deref(), Some("nodes is forbidden"));
        assert_eq!(status_message(b"{}"), None);
    }

    #[test]
    fn a_pages_metadata_is_read_without_its_nodes() {
        let body = list_bytes(&[node_bytes("n1", "10.244.1.0/24", "198.51.100.11")]);
        assert_eq!(list_meta_of(&body).unwrap().resource_version, "4711");
        assert!(list_meta_of(b"{}").is_err());
    }
}
