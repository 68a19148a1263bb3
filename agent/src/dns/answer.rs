//! The answers the agent writes itself: a mesh name's VIP, and the error answers (SERVFAIL,
//! REFUSED) of queries it could neither answer nor forward. Everything else is the pod's
//! resolver's answer, passed back byte for byte.
use std::{net::Ipv4Addr, time::Duration};

use hickory_proto::{
    ProtoError,
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata::A},
};

/// The UDP payload size the agent's answers advertise (RFC 9715's recommendation, below
/// any path MTU); its answers are far smaller.
const EDNS_PAYLOAD: u16 = 1232;

/// A query the agent may answer: a standard query with one question of class IN.
pub fn mesh_question(request: &Message) -> Option<(String, RecordType)> {
    let [query] = request.queries() else {
        return None;
    };
    if request.message_type() != MessageType::Query
        || request.op_code() != OpCode::Query
        || query.query_class() != DNSClass::IN
    {
        return None;
    }
    Some((query.name().to_ascii(), query.query_type()))
}

/// The answer for a mesh name at `vip`: an A record for A and ANY questions; no record, but
/// no error either (NODATA), for every other type — AAAA included, since connects are
/// redirected for IPv4 only, so a client falls back to the A record at once.
pub fn mesh_answer(
    request: &Message,
    raw: &[u8],
    vip: Ipv4Addr,
    ttl: Duration,
) -> Result<Vec<u8>, ProtoError> {
    let mut response = response_to(request, ResponseCode::NoError);
    response.set_authoritative(true);
    if let Some(query) = request.queries().first()
        && matches!(query.query_type(), RecordType::A | RecordType::ANY)
    {
        let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        response.add_answer(Record::from_rdata(
            query.name().clone(),
            ttl,
            RData::A(A(vip)),
        ));
    }
    let mut bytes = response.to_vec()?;
    keep_question_case(&mut bytes, raw);
    Ok(bytes)
}

/// An error answer (`code`) to `request`, or to the raw query when it did not parse (its id
/// is all that is kept); `None` when not even an id can be read.
pub fn error_answer(request: Option<&Message>, raw: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let response = match request {
        Some(request) => response_to(request, code),
        None => {
            let id = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
            Message::error_msg(id, OpCode::Query, code)
        }
    };
    let mut bytes = response.to_vec().ok()?;
    keep_question_case(&mut bytes, raw);
    Some(bytes)
}

/// The offset of the question's name in a message: right after the 12-byte header.
const QUESTION: usize = 12;

/// Puts the query's question name back into the answer as the client wrote it: hickory's
/// encoder lower-cases names, and clients that randomise the case of their questions (DNS 0x20)
/// check the answer echoes it. The answer's records point at this name, so they follow.
fn keep_question_case(answer: &mut [u8], raw: &[u8]) {
    let Some(len) = name_len(raw.get(QUESTION..).unwrap_or_default()) else {
        return;
    };
    let span = QUESTION..QUESTION + len;
    if let (Some(theirs), Some(ours)) = (raw.get(span.clone()), answer.get_mut(span))
        && theirs.eq_ignore_ascii_case(ours)
    {
        ours.copy_from_slice(theirs);
    }
}

/// The wire length of an uncompressed name at the start of `bytes` (labels and the final
/// zero), if it is one.
fn name_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let label = usize::from(*bytes.get(at)?);
        if label == 0 {
            return Some(at + 1);
        }
        // 0xC0 and above: a pointer (or a reserved form); a question's name is never one.
        if label >= 0x40 {
            return None;
        }
        at += 1 + label;
    }
}

/// A response with the request's id, opcode, question, recursion-desired and
/// checking-disabled bits, and an OPT record when the request had one (RFC 6891 §7).
fn response_to(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(request.checking_disabled())
        .set_response_code(code)
        .add_queries(request.queries().iter().cloned());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    fn query(name: &str, query_type: RecordType, edns: bool) -> Message {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), query_type));
        if edns {
            message.set_edns(Edns::new());
        }
        message
    }

    #[test]
    fn a_mesh_name_gets_its_vip_and_aaaa_gets_nodata() {
        let vip = Ipv4Addr::new(240, 240, 1, 2);
        let request = query("Api.M.Local.", RecordType::A, true);
        let mut raw = request.to_vec().unwrap();
        // The case as a client randomising it (DNS 0x20) sends it.
        raw[12..25].copy_from_slice(b"\x03Api\x01M\x05Local\x00");
        let parsed = Message::from_vec(&raw).unwrap();
        let bytes = mesh_answer(&parsed, &raw, vip, Duration::from_secs(5)).unwrap();
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.id(), 4242);
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.authoritative() && answer.recursion_desired());
        // As the client wrote it, though hickory's encoder lower-cases names.
        assert_eq!(&bytes[12..25], b"\x03Api\x01M\x05Local\x00");
        let [record] = answer.answers() else {
            panic!("one answer: {answer:?}");
        };
        assert_eq!(record.data(), &RData::A(A(vip)));
        assert_eq!(record.ttl(), 5);
        assert!(answer.extensions().is_some(), "EDNS answered with EDNS");

        let request = query("api.m.local.", RecordType::AAAA, false);
        let raw = request.to_vec().unwrap();
        let answer =
            Message::from_vec(&mesh_answer(&request, &raw, vip, Duration::from_secs(5)).unwrap())
                .unwrap();
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.answers().is_empty());
        assert!(answer.extensions().is_none());
    }

    #[test]
    fn only_plain_queries_are_mesh_questions() {
        let request = query("api.m.local.", RecordType::A, false);
        assert_eq!(
            mesh_question(&request),
            Some(("api.m.local.".to_owned(), RecordType::A))
        );
        let mut update = request.clone();
        update.set_op_code(OpCode::Update);
        assert_eq!(mesh_question(&update), None);
        let mut two = request.clone();
        two.add_query(Query::query(Name::from_str("b.").unwrap(), RecordType::A));
        assert_eq!(mesh_question(&two), None);
    }

    #[test]
    fn errors_keep_the_id_even_of_garbage() {
        let answer = error_answer(None, &[0x12, 0x34, 0xff], ResponseCode::Refused).unwrap();
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!(answer.id(), 0x1234);
        assert_eq!(answer.response_code(), ResponseCode::Refused);
        assert_eq!(error_answer(None, &[0x12], ResponseCode::Refused), None);
    }
}
