//! Real mail clients against a node: Roundcube (Debian's `roundcube-core` under PHP's
//! built-in server, driven over HTTP as its pages drive it) and mutt (under `script`,
//! driven by keys), each over IMAP with STARTTLS and SMTP submission. The scripts in
//! `tests/scripts/clients/` check each step on the server, and read the clients' own
//! protocol traces for any `NO`, `BAD` or 4xx/5xx answer: listing, sorting, threads,
//! reading multipart and Chinese mail, search, flags, folders with modified UTF-7 names,
//! move, copy, delete, drafts, replies, sending with attachments, bounce (Resent-From),
//! QRESYNC reopen and IDLE.

use std::time::Duration;

use crate::crate_dir;
use crate::imap::{ALICE, PASSWORD, node_with_account};

/// Most time one client script may take (they take 10-30 s; each step is bounded too).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn roundcube_and_mutt_work_against_a_node() {
    let node = node_with_account("", None).await;
    let work = tempfile::tempdir().expect("tempdir");
    for script in ["roundcube.sh", "mutt.sh"] {
        let run = tokio::process::Command::new("bash")
            .arg(crate_dir().join("scripts/clients").join(script))
            .args([&node.imap.port().to_string(), &node.submission.port().to_string(), ALICE, PASSWORD])
            .env("WORK", work.path().join(script))
            .env("HOST", "127.0.0.1")
            .env("IMAP_SECURITY", "starttls")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{script} took over {SCRIPT_TIMEOUT:?}"))
            .expect("run bash");
        let report = format!(
            "{script}:\n{}\n{}\nnode log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            node.log()
        );
        assert!(output.status.success(), "{report}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("PASS"), "{report}");
    }
}
