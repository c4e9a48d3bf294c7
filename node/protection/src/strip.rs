//! Stripping infected attachments: each attachment is scanned on its own, and the bytes
//! of an infected one (its MIME part, headers included) are replaced by a short text part
//! saying what was removed; the rest of the message is kept byte for byte.

use mail_parser::{MessageParser, MimeHeaders};

use crate::clamd::{Clamd, ScanError, ScanResult};

/// Most attachments scanned one by one (each is one clamd round trip).
const MAX_SCANNED_ATTACHMENTS: usize = 50;

/// The message without its infected attachments and what was removed, or `None` when no
/// attachment is infected (the virus is elsewhere: the message cannot be cleaned).
pub(crate) async fn infected_attachments(
    clamd: &Clamd,
    raw: &[u8],
) -> Result<Option<(Vec<u8>, Vec<String>)>, ScanError> {
    let Some(message) = MessageParser::default().parse(raw) else { return Ok(None) };
    let mut cuts: Vec<(usize, usize, String)> = Vec::new();
    for attachment in message.attachments().take(MAX_SCANNED_ATTACHMENTS) {
        // A message that is one attachment (a non-multipart binary body) has nothing
        // left to deliver without it.
        if attachment.raw_header_offset() == 0 {
            return Ok(None);
        }
        if let ScanResult::Infected(virus) = clamd.scan(attachment.contents()).await? {
            let name = attachment.attachment_name().unwrap_or("unnamed").to_owned();
            let (start, end) = (attachment.raw_header_offset() as usize, attachment.raw_end_offset() as usize);
            if start < end && end <= raw.len() {
                cuts.push((start, end, format!("{name} ({virus})")));
            }
        }
    }
    if cuts.is_empty() {
        return Ok(None);
    }
    cuts.sort_by_key(|(start, _, _)| *start);
    let mut cleaned = Vec::with_capacity(raw.len());
    let mut at = 0;
    let mut removed = Vec::new();
    for (start, end, what) in cuts {
        if start < at {
            continue; // nested inside a part already removed
        }
        cleaned.extend_from_slice(&raw[at..start]);
        let notice = what.replace(['\r', '\n'], " ");
        cleaned.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline\r\n\r\n\
The attachment {notice} was removed by the mail server: it contained a virus.\r\n"
            )
            .as_bytes(),
        );
        removed.push(what);
        at = end;
    }
    cleaned.extend_from_slice(&raw[at..]);
    // The rest must be clean too (a virus in the text or an inline part cannot be cut).
    if clamd.scan(&cleaned).await? != ScanResult::Clean {
        return Ok(None);
    }
    Ok(Some((cleaned, removed)))
}
