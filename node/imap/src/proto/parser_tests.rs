//! Unit tests of the command parser (one section per command family).

use super::*;
use crate::proto::command::*;

fn t(line: &str) -> Segment {
    Segment::Text(line.as_bytes().to_vec())
}

fn lit(bytes: &str) -> Segment {
    Segment::Literal(bytes.as_bytes().to_vec())
}

fn parse_segments(segments: &[Segment]) -> Command {
    match parse_command(segments) {
        Ok(tagged) => tagged.command,
        Err(error) => panic!("{segments:?}: {}", error.text),
    }
}

fn parse(line: &str) -> Command {
    parse_segments(&[t(line)])
}

fn error(line: &str) -> ParseError {
    match parse_command(&[t(line)]) {
        Ok(tagged) => panic!("{line} parsed as {:?}", tagged.command),
        Err(error) => error,
    }
}

/// The error text, checking that the tag `a` was recovered.
fn bad(line: &str) -> String {
    let error = error(line);
    assert_eq!(error.tag.as_deref(), Some("a"), "{line}: {}", error.text);
    error.text
}

fn nums(ranges: &[(u32, u32)]) -> SequenceSet {
    SequenceSet::Ranges(ranges.iter().map(|&(a, b)| (SeqBound::Number(a), SeqBound::Number(b))).collect())
}

fn key(criteria: &str) -> SearchKey {
    match parse(&format!("a SEARCH {criteria}")) {
        Command::Search { key, .. } => key,
        other => panic!("{other:?}"),
    }
}

fn items(items: &str) -> Vec<FetchItem> {
    match parse(&format!("a FETCH 1 {items}")) {
        Command::Fetch { items, .. } => items,
        other => panic!("{other:?}"),
    }
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
}

fn section(part: &[u32], text: Option<SectionText>) -> Section {
    Section { part: part.to_vec(), text }
}

fn body(peek: bool, section: Section, partial: Option<(u32, u32)>) -> FetchItem {
    FetchItem::BodySection { peek, section, partial }
}

#[test]
fn literal_announcements() {
    let ann = |length, non_synchronizing, binary| Some(LiteralAnnouncement { length, non_synchronizing, binary });
    assert_eq!(literal_announcement(b"a LOGIN {5}"), ann(5, false, false));
    assert_eq!(literal_announcement(b"{0}"), ann(0, false, false));
    assert_eq!(literal_announcement(b"x {12+}"), ann(12, true, false));
    assert_eq!(literal_announcement(b"x ~{7}"), ann(7, false, true));
    assert_eq!(literal_announcement(b"x ~{7+}"), ann(7, true, true));
    assert_eq!(literal_announcement(b"{18446744073709551615}"), ann(u64::MAX, false, false));
    for line in ["", "}", "{}", "{+}", "{a}", "5}", "x {5", "{5 }", "{-5}", "{5++}", "{18446744073709551616}"] {
        assert_eq!(literal_announcement(line.as_bytes()), None, "{line}");
    }
    assert_eq!(literal_announcement(b"{000000000000000000001}"), None, "21 digits");
}

#[test]
fn commands_without_arguments() {
    assert_eq!(parse("a CAPABILITY"), Command::Capability);
    assert_eq!(parse("a noop"), Command::Noop);
    assert_eq!(parse("a Logout"), Command::Logout);
    assert_eq!(parse("a STARTTLS"), Command::StartTls);
    assert_eq!(parse("a NAMESPACE"), Command::Namespace);
    assert_eq!(parse("a IDLE"), Command::Idle);
    assert_eq!(parse("a CHECK"), Command::Check);
    assert_eq!(parse("a CLOSE"), Command::Close);
    assert_eq!(parse("a UNSELECT"), Command::Unselect);
    assert_eq!(parse("a EXPUNGE"), Command::Expunge { uids: None });
    assert_eq!(parse("a UID EXPUNGE 1:3,5"), Command::Expunge { uids: Some(nums(&[(1, 3), (5, 5)])) });
    assert_eq!(bad("a NOOP x"), "unexpected data after the NOOP command");
    assert_eq!(bad("a NOOP "), "unexpected data after the NOOP command");
    assert_eq!(bad("a FROB"), "unknown command FROB");
    assert_eq!(bad("a UID EXPUNGE"), "expected a UID set after UID EXPUNGE");
    assert!(bad("a UID NOOP").starts_with("UID must be followed by"));
}

#[test]
fn tags() {
    let tagged = parse_command(&[t("A.1]x NOOP")]).expect("parses");
    assert_eq!(tagged.tag, "A.1]x");
    for line in ["", " NOOP", "+a NOOP", "a+b NOOP", "* NOOP", "a*b NOOP", "(a NOOP", "a\"b NOOP"] {
        assert_eq!(error(line).tag, None, "{line}");
    }
    assert_eq!(bad("a"), "expected a command name after the tag");
    assert_eq!(bad("a  NOOP"), "expected a command name after the tag");
}

#[test]
fn authenticate() {
    let auth = |mechanism: &str, initial: Option<&str>| Command::Authenticate {
        mechanism: mechanism.to_owned(),
        initial: initial.map(str::to_owned),
    };
    assert_eq!(parse("a AUTHENTICATE plain"), auth("PLAIN", None));
    assert_eq!(parse("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA=="), auth("PLAIN", Some("AGFsaWNlAHNlY3JldA==")));
    assert_eq!(parse("a AUTHENTICATE SCRAM-SHA-256 ="), auth("SCRAM-SHA-256", Some("=")));
    for line in ["a AUTHENTICATE", "a AUTHENTICATE PLAIN abc", "a AUTHENTICATE PLAIN a!b=", "a AUTHENTICATE PLAIN "] {
        bad(line);
    }
}

#[test]
fn login_with_strings_and_literals() {
    let login = |user: &str, password: &str| Command::Login { user: user.to_owned(), password: password.to_owned() };
    assert_eq!(parse("a LOGIN alice secret"), login("alice", "secret"));
    assert_eq!(parse(r#"a login "al ice" "s\"e\\c""#), login("al ice", "s\"e\\c"));
    assert_eq!(parse(r#"a LOGIN "" """#), login("", ""));
    assert_eq!(parse("a LOGIN a]b ]"), login("a]b", "]"));
    // Tokens spanning segments: both arguments as literals, with and without a final line.
    let segments = [t("a LOGIN {5}"), lit("alice"), t(" {6+}"), lit("s cr t")];
    assert_eq!(parse_segments(&segments), login("alice", "s cr t"));
    let segments = [t("a LOGIN {5}"), lit("alice"), t(" {6}"), lit("secret"), t("")];
    assert_eq!(parse_segments(&segments), login("alice", "secret"));
    assert_eq!(parse_segments(&[t("a LOGIN bob {0}"), lit(""), t("")]), login("bob", ""));
    assert_eq!(parse_segments(&[t("a LOGIN {3}"), lit("j\u{f6}"), t(" x")]), login("j\u{f6}", "x"));

    assert_eq!(bad("a LOGIN"), "expected a user name after LOGIN");
    assert_eq!(bad("a LOGIN alice"), "expected a password after the user name");
    assert_eq!(bad("a LOGIN alice secret x"), "unexpected data after the LOGIN command");
    assert_eq!(bad(r#"a LOGIN "alice secret"#), "unterminated quoted string");
    assert!(bad(r#"a LOGIN "a\lice" x"#).contains("backslash"));
    assert!(bad("a LOGIN al(ice x").contains("space"));
    let error = |segments: &[Segment]| parse_command(segments).expect_err("refused");
    assert!(error(&[t("a LOGIN {2}"), Segment::Literal(vec![0xff, 0xfe]), t(" x")]).text.contains("UTF-8"));
    assert!(error(&[t("a LOGIN {2}"), Segment::Literal(vec![b'a', 0]), t(" x")]).text.contains("NUL"));
    assert!(error(&[t("a LOGIN ~{1}"), lit("a"), t(" x")]).text.contains("literal8"));
    assert!(error(&[t("a LOGIN {1}"), Segment::Message, t(" x")]).text.contains("message data"));
    assert!(error(&[t("a LOGIN x\"y\" z")]).text.contains("space"));
}

#[test]
fn framing_errors_keep_the_tag() {
    for segments in [
        vec![t("a LOGIN {5}")],
        vec![t("a LOGIN {5}"), lit("alic"), t(" x")],
        vec![t("a LOGIN x y"), t("z")],
        vec![t("a LOGIN {1}"), lit("x"), lit("y")],
        vec![t("a LOGIN {1}"), t("x")],
    ] {
        let error = parse_command(&segments).expect_err("refused");
        assert_eq!(error.tag.as_deref(), Some("a"), "{segments:?}");
    }
    assert_eq!(parse_command(&[lit("x")]).expect_err("refused").tag, None);
    assert_eq!(parse_command(&[]).expect_err("refused").tag, None);
}

#[test]
fn enable_and_id() {
    let enable = parse("a ENABLE condstore utf8=accept");
    assert_eq!(enable, Command::Enable { capabilities: vec!["CONDSTORE".into(), "UTF8=ACCEPT".into()] });
    bad("a ENABLE");
    bad("a ENABLE ");
    assert_eq!(parse("a ID nil"), Command::Id { params: None });
    assert_eq!(parse("a ID ()"), Command::Id { params: Some(vec![]) });
    let id = parse(r#"a ID ("name" "Thunderbird" "os" NIL)"#);
    let expected = vec![("name".to_owned(), Some("Thunderbird".to_owned())), ("os".to_owned(), None)];
    assert_eq!(id, Command::Id { params: Some(expected) });
    let id = parse_segments(&[t("a ID ({4}"), lit("name"), t(" {2}"), lit("mu"), t(")")]);
    assert_eq!(id, Command::Id { params: Some(vec![("name".to_owned(), Some("mu".to_owned()))]) });
    for line in ["a ID", "a ID (name x)", r#"a ID ("name")"#, r#"a ID ("name" "x""#, r#"a ID ("a" "b" )"#] {
        bad(line);
    }
}

#[test]
fn select_and_examine() {
    let select = |mailbox: &str, read_only, condstore, qresync| Command::Select {
        mailbox: mailbox.to_owned(),
        read_only,
        condstore,
        qresync,
    };
    assert_eq!(parse("a SELECT inbox"), select("INBOX", false, false, None));
    assert_eq!(parse("a examine \"InBox\""), select("INBOX", true, false, None));
    assert_eq!(parse("a SELECT INBOX.Sent"), select("INBOX.Sent", false, false, None));
    assert_eq!(parse("a SELECT \"Caf\u{e9}\""), select("Caf\u{e9}", false, false, None));
    assert_eq!(parse("a SELECT Drafts (condstore)"), select("Drafts", false, true, None));
    let qresync = |known_uids, seq_match| {
        Some(QresyncParams { uid_validity: 67890007, modseq: 20050715194045000, known_uids, seq_match })
    };
    assert_eq!(
        parse("a SELECT INBOX (QRESYNC (67890007 20050715194045000))"),
        select("INBOX", false, false, qresync(None, None))
    );
    assert_eq!(
        parse("a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))"),
        select("INBOX", false, false, qresync(Some(nums(&[(41, 41), (43, 211)])), None))
    );
    assert_eq!(
        parse("a EXAMINE INBOX (CONDSTORE QRESYNC (67890007 20050715194045000 1:9 (1,5 10,50)))"),
        select(
            "INBOX",
            true,
            true,
            qresync(Some(nums(&[(1, 9)])), Some((nums(&[(1, 1), (5, 5)]), nums(&[(10, 10), (50, 50)]))))
        )
    );
    assert_eq!(
        parse("a SELECT INBOX (QRESYNC (67890007 20050715194045000 (1 10)))"),
        select("INBOX", false, false, qresync(None, Some((nums(&[(1, 1)]), nums(&[(10, 10)])))))
    );
    assert_eq!(
        parse_segments(&[t("a SELECT {5}"), lit("inBOX"), t(" (CONDSTORE)")]),
        select("INBOX", false, true, None)
    );
    assert_eq!(bad("a SELECT"), "expected a mailbox name after SELECT");
    assert_eq!(bad("a EXAMINE"), "expected a mailbox name after EXAMINE");
    for line in [
        "a SELECT INBOX ()",
        "a SELECT INBOX (FOO)",
        "a SELECT INBOX (CONDSTORE",
        "a SELECT INBOX (QRESYNC (0 1))",
        "a SELECT INBOX (QRESYNC (1 0))",
        "a SELECT INBOX (QRESYNC (1 2 1:*))",
        "a SELECT INBOX (QRESYNC (1 2 $))",
        "a SELECT INBOX (QRESYNC (1 2 1:5 ))",
        "a SELECT INBOX (QRESYNC (1 2 (1)))",
        "a SELECT INBOX (QRESYNC (1 9223372036854775808))",
        "a SELECT INBOX x",
    ] {
        bad(line);
    }
    let error = parse_command(&[t("a SELECT {1}"), Segment::Literal(vec![0xc3]), t("")]).expect_err("refused");
    assert_eq!(error.text, "a mailbox name after SELECT must be valid UTF-8");
}

#[test]
fn mailbox_management() {
    let create = |mailbox: &str, special_use: &[&str]| Command::Create {
        mailbox: mailbox.to_owned(),
        special_use: special_use.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(parse("a CREATE Archive"), create("Archive", &[]));
    assert_eq!(parse("a CREATE Sent (USE (\\Sent))"), create("Sent", &["\\Sent"]));
    assert_eq!(parse("a CREATE x (use (\\Junk \\Trash))"), create("x", &["\\Junk", "\\Trash"]));
    assert_eq!(parse("a CREATE x (USE ())"), create("x", &[]));
    for line in
        ["a CREATE", "a CREATE x ()", "a CREATE x (USE)", "a CREATE x (USE (Sent))", "a CREATE x (FOO (\\Sent))"]
    {
        bad(line);
    }
    assert_eq!(parse("a DELETE inbox"), Command::Delete { mailbox: "INBOX".into() });
    assert_eq!(parse("a RENAME old \"new one\""), Command::Rename { from: "old".into(), to: "new one".into() });
    assert_eq!(parse("a SUBSCRIBE news"), Command::Subscribe { mailbox: "news".into() });
    assert_eq!(parse("a UNSUBSCRIBE news"), Command::Unsubscribe { mailbox: "news".into() });
    assert_eq!(bad("a RENAME old"), "expected a new mailbox name after RENAME");
    assert_eq!(bad("a DELETE"), "expected a mailbox name after DELETE");
    bad("a SUBSCRIBE a b");
    bad("a UNSUBSCRIBE");
    bad("a DELETE *");
}

#[test]
fn list_and_lsub() {
    let list = |reference: &str, patterns: &[&str], options: ListOptions, lsub| Command::List {
        reference: reference.to_owned(),
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        options,
        lsub,
    };
    let plain = ListOptions::default();
    assert_eq!(parse("a LIST \"\" *"), list("", &["*"], plain.clone(), false));
    assert_eq!(parse("a LIST \"\" %"), list("", &["%"], plain.clone(), false));
    assert_eq!(parse("a list ~/Mail/ foo%]*"), list("~/Mail/", &["foo%]*"], plain.clone(), false));
    assert_eq!(parse("a LIST \"\" \"a b\""), list("", &["a b"], plain.clone(), false));
    assert_eq!(parse("a LIST inbox inbox"), list("INBOX", &["inbox"], plain.clone(), false));
    assert_eq!(parse("a LSUB \"\" news.*"), list("", &["news.*"], plain.clone(), true));
    let options = ListOptions { select_subscribed: true, recursive_match: true, ..plain.clone() };
    assert_eq!(parse("a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (% INBOX)"), list("", &["%", "INBOX"], options, false));
    let options = ListOptions { select_special_use: true, return_special_use: true, ..plain.clone() };
    assert_eq!(parse("a LIST (SPECIAL-USE) \"\" * RETURN (SPECIAL-USE)"), list("", &["*"], options, false));
    let options = ListOptions {
        return_subscribed: true,
        return_children: true,
        return_status: Some(vec![StatusItem::Messages, StatusItem::Unseen]),
        ..plain.clone()
    };
    assert_eq!(
        parse("a LIST () \"\" % RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))"),
        list("", &["%"], options, false)
    );
    assert_eq!(parse("a LIST (REMOTE) \"\" * RETURN ()"), list("", &["*"], plain.clone(), false));
    let segments = [t("a LIST {0}"), lit(""), t(" {3}"), lit("a*b"), t("")];
    assert_eq!(parse_segments(&segments), list("", &["a*b"], plain, false));
    assert_eq!(bad("a LIST (RECURSIVEMATCH) \"\" *"), "RECURSIVEMATCH needs another selection option");
    for line in [
        "a LIST",
        "a LIST \"\"",
        "a LIST \"\" ()",
        "a LIST (FOO) \"\" *",
        "a LIST \"\" * RETURN",
        "a LIST \"\" * RETURN (FOO)",
        "a LIST \"\" * RETURN (STATUS ())",
        "a LIST \"\" * (CHILDREN)",
        "a LIST \"\" a(b",
        "a LSUB \"\" (a b)",
        "a LSUB \"\"",
    ] {
        bad(line);
    }
}

#[test]
fn status() {
    let all = "MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT HIGHESTMODSEQ MAILBOXID";
    let items = vec![
        StatusItem::Messages,
        StatusItem::UidNext,
        StatusItem::UidValidity,
        StatusItem::Unseen,
        StatusItem::Deleted,
        StatusItem::Size,
        StatusItem::Recent,
        StatusItem::HighestModSeq,
        StatusItem::MailboxId,
    ];
    assert_eq!(parse(&format!("a STATUS Inbox ({all})")), Command::Status { mailbox: "INBOX".into(), items });
    let lower = parse("a status x (messages)");
    assert_eq!(lower, Command::Status { mailbox: "x".into(), items: vec![StatusItem::Messages] });
    for line in ["a STATUS x", "a STATUS x ()", "a STATUS x (FOO)", "a STATUS x MESSAGES", "a STATUS x (MESSAGES "] {
        bad(line);
    }
}

#[test]
fn append_single_and_multi() {
    let message = |flags: &[&str], internal_date_ms, index| AppendMessage {
        flags: flags.iter().map(|s| s.to_string()).collect(),
        internal_date_ms,
        body: MessageRef { index },
    };
    let append = |mailbox: &str, messages| Command::Append { mailbox: mailbox.to_owned(), messages };
    let segments = [t("a APPEND inbox {310}"), Segment::Message, t("")];
    assert_eq!(parse_segments(&segments), append("INBOX", vec![message(&[], None, 0)]));
    let segments = [t("a APPEND Sent (\\Seen $Forwarded) \"17-Jul-1996 02:44:25 -0700\" {310}"), Segment::Message];
    let expected = message(&["\\Seen", "$Forwarded"], Some(837_596_665_000), 0);
    assert_eq!(parse_segments(&segments), append("Sent", vec![expected]));
    let segments = [t("a APPEND x \" 1-Feb-2024 23:00:00 +0000\" ~{3}"), Segment::Message, t("")];
    assert_eq!(parse_segments(&segments), append("x", vec![message(&[], Some(1_706_828_400_000), 0)]));
    let segments = [t("a APPEND x () \"02-feb-2024 01:30:00 +0230\" {3+}"), Segment::Message, t("")];
    assert_eq!(parse_segments(&segments), append("x", vec![message(&[], Some(1_706_828_400_000), 0)]));
    // MULTIAPPEND with a literal mailbox name.
    let segments = [
        t("a APPEND {5}"),
        lit("Saved"),
        t(" (\\Draft) {10}"),
        Segment::Message,
        t(" {20}"),
        Segment::Message,
        t(" \"01-Jan-1970 00:00:00 +0000\" {1}"),
        Segment::Message,
        t(""),
    ];
    let messages = vec![message(&["\\Draft"], None, 0), message(&[], None, 1), message(&[], Some(0), 2)];
    assert_eq!(parse_segments(&segments), append("Saved", messages));

    let refused = |segments: &[Segment]| parse_command(segments).expect_err("refused").text;
    assert_eq!(bad("a APPEND"), "expected a mailbox name after APPEND");
    assert_eq!(bad("a APPEND x"), "expected a message after the APPEND mailbox name");
    assert!(refused(&[t("a APPEND x (\\*) {1}"), Segment::Message]).contains("PERMANENTFLAGS"));
    assert!(refused(&[t("a APPEND x \"1-Jan-2024 00:00:00 +0000\" {1}"), Segment::Message]).contains("date-time"));
    assert!(refused(&[t("a APPEND x \"01-Jan-2024 24:00:00 +0000\" {1}"), Segment::Message]).contains("date-time"));
    assert!(refused(&[t("a APPEND x \"31-Feb-2024 00:00:00 +0000\" {1}"), Segment::Message]).contains("date-time"));
    assert!(refused(&[t("a APPEND x \"01-Jan-2024 00:00:00 +0060\" {1}"), Segment::Message]).contains("date-time"));
    assert!(refused(&[t("a APPEND x \"01-Jan-2024 00:00:00 0000\" {1}"), Segment::Message]).contains("date-time"));
    assert!(refused(&[t("a APPEND x {1}"), lit("x")]).contains("not stored"));
    assert!(refused(&[t("a APPEND x (\\Seen)")]).contains("message"));
    assert!(refused(&[t("a APPEND x {1}"), Segment::Message, t(" ")]).contains("message"));
    assert!(refused(&[t("a APPEND x {1}"), Segment::Message, t("x")]).contains("space"));
    assert!(refused(&[t("a APPEND x (\\Seen){1}"), Segment::Message]).contains("space"));
    assert!(refused(&[t("a APPEND x NIL {1}"), Segment::Message]).contains("literal"));
}

#[test]
fn message_literals_are_recognised() {
    assert!(is_message_literal(&[t("a APPEND INBOX {10}")]));
    assert!(is_message_literal(&[t("a append INBOX ~{10+}")]));
    assert!(is_message_literal(&[t("a APPEND x (\\Seen) \" 1-Jan-2024 10:00:00 +0100\" {10}")]));
    assert!(is_message_literal(&[t("a APPEND {5}"), lit("inbox"), t(" {10}")]));
    assert!(is_message_literal(&[t("a APPEND x {1}"), Segment::Message, t(" (\\Seen) {10}")]));
    assert!(is_message_literal(&[t("a APPEND x {1}"), Segment::Message, t(" {10}"), Segment::Message, t(" {3}")]));
    assert!(!is_message_literal(&[t("a APPEND {5}")]), "the mailbox name itself");
    assert!(!is_message_literal(&[t("a APPEND x (\\Seen {5}")]));
    assert!(!is_message_literal(&[t("a APPEND x \"bad date\" {5}")]));
    assert!(!is_message_literal(&[t("a LOGIN {5}")]));
    assert!(!is_message_literal(&[t("a LOGIN {5}"), lit("alice"), t(" {6}")]));
    assert!(!is_message_literal(&[t("a SEARCH TEXT {5}")]));
    assert!(!is_message_literal(&[t("a UID APPEND x {5}")]));
    assert!(!is_message_literal(&[t("a APPENDX x {5}")]));
    assert!(!is_message_literal(&[t("a APPEND x {5}"), Segment::Message]));
    assert!(!is_message_literal(&[t("a APPEND x")]));
    assert!(!is_message_literal(&[]));
}

#[test]
fn search_keys() {
    let simple = [
        ("ALL", SearchKey::All),
        ("answered", SearchKey::Answered),
        ("DELETED", SearchKey::Deleted),
        ("DRAFT", SearchKey::Draft),
        ("FLAGGED", SearchKey::Flagged),
        ("NEW", SearchKey::New),
        ("OLD", SearchKey::Old),
        ("RECENT", SearchKey::Recent),
        ("SEEN", SearchKey::Seen),
        ("UNANSWERED", SearchKey::Unanswered),
        ("UNDELETED", SearchKey::Undeleted),
        ("UNDRAFT", SearchKey::Undraft),
        ("UNFLAGGED", SearchKey::Unflagged),
        ("UNSEEN", SearchKey::Unseen),
        ("KEYWORD $Junk", SearchKey::Keyword("$Junk".into())),
        ("UNKEYWORD foo", SearchKey::Unkeyword("foo".into())),
        ("BCC bob", SearchKey::Bcc("bob".into())),
        ("BODY \"hello world\"", SearchKey::Body("hello world".into())),
        ("CC carol", SearchKey::Cc("carol".into())),
        ("FROM alice@example.com", SearchKey::From("alice@example.com".into())),
        ("SUBJECT \"\"", SearchKey::Subject(String::new())),
        ("TEXT \"caf\u{e9}\"", SearchKey::Text("caf\u{e9}".into())),
        ("TO dave", SearchKey::To("dave".into())),
        ("HEADER Message-ID <x@y>", SearchKey::Header("Message-ID".into(), "<x@y>".into())),
        ("BEFORE 1-Feb-2024", SearchKey::Before(date(2024, 2, 1))),
        ("ON \"01-feb-2024\"", SearchKey::On(date(2024, 2, 1))),
        ("SINCE 29-Feb-2024", SearchKey::Since(date(2024, 2, 29))),
        ("SENTBEFORE 31-Dec-1999", SearchKey::SentBefore(date(1999, 12, 31))),
        ("SENTON 1-Jan-2000", SearchKey::SentOn(date(2000, 1, 1))),
        ("SENTSINCE 15-Jun-2010", SearchKey::SentSince(date(2010, 6, 15))),
        ("LARGER 10000", SearchKey::Larger(10000)),
        ("SMALLER 0", SearchKey::Smaller(0)),
        ("UID 1:*", SearchKey::Uid(SequenceSet::Ranges(vec![(SeqBound::Number(1), SeqBound::Largest)]))),
        ("UID $", SearchKey::Uid(SequenceSet::Saved)),
        (
            "1,3:4,*",
            SearchKey::Sequence(SequenceSet::Ranges(vec![
                (SeqBound::Number(1), SeqBound::Number(1)),
                (SeqBound::Number(3), SeqBound::Number(4)),
                (SeqBound::Largest, SeqBound::Largest),
            ])),
        ),
        ("$", SearchKey::Sequence(SequenceSet::Saved)),
        ("NOT SEEN", SearchKey::Not(Box::new(SearchKey::Seen))),
        ("OR SEEN FLAGGED", SearchKey::Or(Box::new(SearchKey::Seen), Box::new(SearchKey::Flagged))),
        ("(SEEN)", SearchKey::And(vec![SearchKey::Seen])),
        ("MODSEQ 0", SearchKey::ModSeq(0)),
        ("MODSEQ \"/flags/\\\\draft\" all 620162338", SearchKey::ModSeq(620162338)),
        ("OLDER 3600", SearchKey::Older(3600)),
        ("YOUNGER 60", SearchKey::Younger(60)),
        ("EMAILID M6d99ac3275bb4e", SearchKey::EmailId("M6d99ac3275bb4e".into())),
        ("THREADID T64b478a75b7ea9", SearchKey::ThreadId("T64b478a75b7ea9".into())),
    ];
    for (criteria, expected) in simple {
        assert_eq!(key(criteria), expected, "{criteria}");
    }
}

#[test]
fn search_structure_and_options() {
    let nested = key("FLAGGED (OR FROM a (TO b CC c)) NOT (DELETED)");
    let expected = SearchKey::And(vec![
        SearchKey::Flagged,
        SearchKey::And(vec![SearchKey::Or(
            Box::new(SearchKey::From("a".into())),
            Box::new(SearchKey::And(vec![SearchKey::To("b".into()), SearchKey::Cc("c".into())])),
        )]),
        SearchKey::Not(Box::new(SearchKey::And(vec![SearchKey::Deleted]))),
    ]);
    assert_eq!(nested, expected);
    let search = parse("a uid search return (min MAX count) charset utf-8 UNSEEN");
    let returns = Some(vec![SearchReturn::Min, SearchReturn::Max, SearchReturn::Count]);
    assert_eq!(search, Command::Search { uid: true, returns, charset: Some("utf-8".into()), key: SearchKey::Unseen });
    let search = parse("a SEARCH RETURN () ALL");
    assert_eq!(
        search,
        Command::Search { uid: false, returns: Some(vec![SearchReturn::All]), charset: None, key: SearchKey::All }
    );
    let search = parse("a SEARCH RETURN (SAVE ALL) 1:5");
    let returns = Some(vec![SearchReturn::Save, SearchReturn::All]);
    assert_eq!(
        search,
        Command::Search { uid: false, returns, charset: None, key: SearchKey::Sequence(nums(&[(1, 5)])) }
    );
    // A literal search string across segments.
    let segments = [t("a SEARCH CHARSET {5}"), lit("UTF-8"), t(" SUBJECT {5}"), lit("\u{fc}ber"), t(" SEEN")];
    let key = SearchKey::And(vec![SearchKey::Subject("\u{fc}ber".into()), SearchKey::Seen]);
    assert_eq!(
        parse_segments(&segments),
        Command::Search { uid: false, returns: None, charset: Some("UTF-8".into()), key }
    );

    for line in [
        "a SEARCH",
        "a SEARCH ",
        "a SEARCH FOO",
        "a SEARCH SEEN  UNSEEN",
        "a SEARCH ()",
        "a SEARCH (SEEN",
        "a SEARCH SEEN)",
        "a SEARCH OR SEEN",
        "a SEARCH NOT",
        "a SEARCH BEFORE 32-Jan-2024",
        "a SEARCH BEFORE 1-Foo-2024",
        "a SEARCH BEFORE 1-Jan-24",
        "a SEARCH BEFORE 001-Jan-2024",
        "a SEARCH LARGER x",
        "a SEARCH LARGER 18446744073709551616",
        "a SEARCH OLDER 0",
        "a SEARCH UID",
        "a SEARCH 0",
        "a SEARCH 1:0",
        "a SEARCH KEYWORD \\Seen",
        "a SEARCH HEADER Subject",
        "a SEARCH MODSEQ \"/flags/\\\\Seen\" bogus 5",
        "a SEARCH MODSEQ \"/other\" all 5",
        "a SEARCH MODSEQ 9223372036854775808",
        "a SEARCH EMAILID",
        "a SEARCH EMAILID a.b",
        "a SEARCH RETURN (FOO) ALL",
        "a SEARCH RETURN ALL",
        "a SEARCH CHARSET",
        "a SEARCH CHARSET UTF-8",
    ] {
        bad(line);
    }
}

#[test]
fn search_nesting_is_limited() {
    let deep = |depth: usize| format!("a SEARCH {}SEEN{}", "(".repeat(depth), ")".repeat(depth));
    assert!(parse_command(&[t(&deep(50))]).is_ok());
    assert_eq!(bad(&deep(51)), "search criteria are nested too deeply");
    assert_eq!(bad(&deep(100_000)), "search criteria are nested too deeply");
    assert_eq!(bad(&format!("a SEARCH {}SEEN", "NOT ".repeat(100_000))), "search criteria are nested too deeply");
    assert_eq!(bad(&format!("a SEARCH {}SEEN", "OR SEEN ".repeat(100_000))), "search criteria are nested too deeply");
    assert!(parse_command(&[t(&format!("a SEARCH {}SEEN", "NOT ".repeat(50)))]).is_ok());
}

#[test]
fn sort_and_thread() {
    let criterion = |reverse, key| SortCriterion { reverse, key };
    let sort = parse("a UID SORT (REVERSE ARRIVAL subject reverse DISPLAYFROM) UTF-8 ALL");
    let criteria = vec![
        criterion(true, SortKey::Arrival),
        criterion(false, SortKey::Subject),
        criterion(true, SortKey::DisplayFrom),
    ];
    assert_eq!(
        sort,
        Command::Sort { uid: true, returns: None, criteria, charset: "UTF-8".into(), key: SearchKey::All }
    );
    let sort = parse("a SORT RETURN (MIN) (CC DATE FROM SIZE TO DISPLAYTO) US-ASCII SEEN 1:5");
    let criteria = [SortKey::Cc, SortKey::Date, SortKey::From, SortKey::Size, SortKey::To, SortKey::DisplayTo]
        .map(|key| criterion(false, key))
        .to_vec();
    let key = SearchKey::And(vec![SearchKey::Seen, SearchKey::Sequence(nums(&[(1, 5)]))]);
    let returns = Some(vec![SearchReturn::Min]);
    assert_eq!(sort, Command::Sort { uid: false, returns, criteria, charset: "US-ASCII".into(), key });
    let thread = parse("a THREAD references UTF-8 SINCE 5-Mar-2000");
    let key = SearchKey::Since(date(2000, 3, 5));
    assert_eq!(
        thread,
        Command::Thread { uid: false, algorithm: ThreadAlgorithm::References, charset: "UTF-8".into(), key }
    );
    let thread = parse("a UID THREAD ORDEREDSUBJECT UTF-8 ALL");
    let expected = ThreadAlgorithm::OrderedSubject;
    assert_eq!(
        thread,
        Command::Thread { uid: true, algorithm: expected, charset: "UTF-8".into(), key: SearchKey::All }
    );
    for line in [
        "a SORT",
        "a SORT () UTF-8 ALL",
        "a SORT (ARRIVAL) UTF-8",
        "a SORT (ARRIVAL)",
        "a SORT (FOO) UTF-8 ALL",
        "a SORT (REVERSE) UTF-8 ALL",
        "a SORT ARRIVAL UTF-8 ALL",
        "a THREAD FOO UTF-8 ALL",
        "a THREAD REFERENCES UTF-8",
        "a THREAD",
    ] {
        bad(line);
    }
}

#[test]
fn fetch_simple_items_and_macros() {
    let simple = [
        ("UID", FetchItem::Uid),
        ("flags", FetchItem::Flags),
        ("INTERNALDATE", FetchItem::InternalDate),
        ("RFC822", FetchItem::Rfc822),
        ("RFC822.SIZE", FetchItem::Rfc822Size),
        ("RFC822.HEADER", FetchItem::Rfc822Header),
        ("rfc822.text", FetchItem::Rfc822Text),
        ("ENVELOPE", FetchItem::Envelope),
        ("BODY", FetchItem::Body),
        ("BODYSTRUCTURE", FetchItem::BodyStructure),
        ("MODSEQ", FetchItem::ModSeq),
        ("EMAILID", FetchItem::EmailId),
        ("THREADID", FetchItem::ThreadId),
    ];
    for (name, item) in simple {
        assert_eq!(items(name), vec![item.clone()], "{name}");
        assert_eq!(items(&format!("({name})")), vec![item], "({name})");
    }
    let fast = vec![FetchItem::Flags, FetchItem::InternalDate, FetchItem::Rfc822Size];
    assert_eq!(items("fast"), fast);
    let all = [fast.clone(), vec![FetchItem::Envelope]].concat();
    assert_eq!(items("ALL"), all);
    assert_eq!(items("FULL"), [all, vec![FetchItem::Body]].concat());
    assert_eq!(items("(UID FLAGS BODY)"), vec![FetchItem::Uid, FetchItem::Flags, FetchItem::Body]);
    let fetch = parse("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)");
    let set = SequenceSet::Ranges(vec![(SeqBound::Number(1), SeqBound::Largest)]);
    let expected =
        Command::Fetch { uid: true, set, items: vec![FetchItem::Flags], changed_since: Some(12345), vanished: true };
    assert_eq!(fetch, expected);
    let fetch = parse("a FETCH $ FLAGS (changedsince 1)");
    let expected = Command::Fetch {
        uid: false,
        set: SequenceSet::Saved,
        items: vec![FetchItem::Flags],
        changed_since: Some(1),
        vanished: false,
    };
    assert_eq!(fetch, expected);
}

#[test]
fn fetch_sections() {
    use SectionText::{Header, HeaderFields, HeaderFieldsNot, Mime, Text};
    let names = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases = [
        ("BODY[]", body(false, section(&[], None), None)),
        ("BODY.PEEK[]", body(true, section(&[], None), None)),
        ("body[]<0.1024>", body(false, section(&[], None), Some((0, 1024)))),
        ("BODY[HEADER]", body(false, section(&[], Some(Header)), None)),
        ("BODY[TEXT]<10.20>", body(false, section(&[], Some(Text)), Some((10, 20)))),
        ("BODY[1]", body(false, section(&[1], None), None)),
        ("BODY.PEEK[1.2.3]", body(true, section(&[1, 2, 3], None), None)),
        ("BODY[2.MIME]", body(false, section(&[2], Some(Mime)), None)),
        ("BODY[4.2.header]", body(false, section(&[4, 2], Some(Header)), None)),
        ("BODY[3.TEXT]", body(false, section(&[3], Some(Text)), None)),
        (
            "BODY.PEEK[HEADER.FIELDS (From To \"X-Spam Score\")]",
            body(true, section(&[], Some(HeaderFields(names(&["From", "To", "X-Spam Score"])))), None),
        ),
        (
            "BODY[1.header.fields.not (Received)]<0.100>",
            body(false, section(&[1], Some(HeaderFieldsNot(names(&["Received"])))), Some((0, 100))),
        ),
        ("BINARY[]", FetchItem::Binary { peek: false, section: Section { part: vec![], text: None }, partial: None }),
        (
            "BINARY.PEEK[1.2]<5.6>",
            FetchItem::Binary { peek: true, section: Section { part: vec![1, 2], text: None }, partial: Some((5, 6)) },
        ),
        (
            "BINARY.PEEK[5]<15>",
            FetchItem::Binary {
                peek: true,
                section: Section { part: vec![5], text: None },
                partial: Some((15, u32::MAX)),
            },
        ),
        ("BINARY.SIZE[3]", FetchItem::BinarySize { section: Section { part: vec![3], text: None } }),
        (
            "BINARY.SIZE[2.MIME]",
            FetchItem::BinarySize { section: Section { part: vec![2], text: Some(SectionText::Mime) } },
        ),
        (
            "BINARY[TEXT]",
            FetchItem::Binary {
                peek: false,
                section: Section { part: vec![], text: Some(SectionText::Text) },
                partial: None,
            },
        ),
    ];
    for (item, expected) in cases {
        assert_eq!(items(item), vec![expected.clone()], "{item}");
        assert_eq!(items(&format!("(UID {item} FLAGS)")), vec![FetchItem::Uid, expected, FetchItem::Flags], "{item}");
    }
    let segments = [t("a FETCH 1 BODY[HEADER.FIELDS ({7}"), lit("Subject"), t(")]")];
    let expected = body(false, section(&[], Some(HeaderFields(names(&["Subject"])))), None);
    let Command::Fetch { items, .. } = parse_segments(&segments) else { panic!("not a FETCH") };
    assert_eq!(items, vec![expected]);
}

#[test]
fn fetch_errors() {
    for line in [
        "a FETCH",
        "a FETCH 1",
        "a FETCH 1 ",
        "a FETCH 0 FLAGS",
        "a FETCH 1:0 FLAGS",
        "a FETCH 4294967296 FLAGS",
        "a FETCH 1, FLAGS",
        "a FETCH ,1 FLAGS",
        "a FETCH 1::2 FLAGS",
        "a FETCH 1,$ FLAGS",
        "a FETCH x FLAGS",
        "a FETCH 1 ()",
        "a FETCH 1 (FLAGS",
        "a FETCH 1 (ALL)",
        "a FETCH 1 FOO",
        "a FETCH 1 FLAGSX",
        "a FETCH 1 FLAGS UID",
        "a FETCH 1 BODY.PEEK",
        "a FETCH 1 BODY[",
        "a FETCH 1 BODY[0]",
        "a FETCH 1 BODY[1.]",
        "a FETCH 1 BODY[.1]",
        "a FETCH 1 BODY[1..2]",
        "a FETCH 1 BODY[MIME]",
        "a FETCH 1 BODY[FOO]",
        "a FETCH 1 BODY[HEADER.FIELDS]",
        "a FETCH 1 BODY[HEADER.FIELDS ()]",
        "a FETCH 1 BODY[TEXT.HEADER]",
        "a FETCH 1 BODY[1.HEADER.2]",
        "a FETCH 1 BODY[]<1.0>",
        "a FETCH 1 BODY[]<1.>",
        "a FETCH 1 BODY[]<1.2",
        "a FETCH 1 BINARY",
        "a FETCH 1 BINARY[FOO]",
        "a FETCH 1 BINARY[0]",
        "a FETCH 1 BINARY.SIZE[1]<0.5>",
        "a FETCH 1 FLAGS ()",
        "a FETCH 1 FLAGS (CHANGEDSINCE 0)",
        "a FETCH 1 FLAGS (FOO)",
        "a FETCH 1 FLAGS (CHANGEDSINCE 5 VANISHED)",
        "a UID FETCH 1 FLAGS (VANISHED)",
    ] {
        bad(line);
    }
}

#[test]
fn store() {
    let store = |set, action, silent, flags: &[&str], unchanged_since| Command::Store {
        uid: false,
        set,
        action,
        silent,
        flags: flags.iter().map(|s| s.to_string()).collect(),
        unchanged_since,
    };
    assert_eq!(
        parse("a STORE 1 FLAGS (\\Seen)"),
        store(nums(&[(1, 1)]), StoreAction::Replace, false, &["\\Seen"], None)
    );
    let expected = store(nums(&[(2, 4)]), StoreAction::Add, true, &["\\Deleted", "$Label1"], None);
    assert_eq!(parse("a STORE 2:4 +flags.silent (\\Deleted $Label1)"), expected);
    let expected = store(nums(&[(1, 1)]), StoreAction::Remove, false, &["\\SEEN", "foo"], None);
    assert_eq!(parse("a STORE 1 -FLAGS \\SEEN foo"), expected);
    let expected = store(SequenceSet::Saved, StoreAction::Replace, true, &[], Some(0));
    assert_eq!(parse("a STORE $ (UNCHANGEDSINCE 0) FLAGS.SILENT ()"), expected);
    let Command::Store { uid, .. } = parse("a UID STORE 1 FLAGS ()") else { panic!("not a STORE") };
    assert!(uid);
    for line in [
        "a STORE",
        "a STORE 1",
        "a STORE 1 FLAGS",
        "a STORE 1 FLAGS ",
        "a STORE 1 FLAGS (\\*)",
        "a STORE 1 FLAGS \\*",
        "a STORE 1 FLAGS (\\)",
        "a STORE 1 FLAGS (\\Seen",
        "a STORE 1 FLAGS \\Seen ",
        "a STORE 1 *FLAGS (\\Seen)",
        "a STORE 1 FLAGS.LOUD (\\Seen)",
        "a STORE 1 +-FLAGS (\\Seen)",
        "a STORE 1 (UNCHANGEDSINCE) FLAGS ()",
        "a STORE 1 (FOO 1) FLAGS ()",
        "a STORE 1 (UNCHANGEDSINCE 1)FLAGS ()",
    ] {
        bad(line);
    }
}

#[test]
fn copy_move_and_quota() {
    let set =
        SequenceSet::Ranges(vec![(SeqBound::Number(2), SeqBound::Number(4)), (SeqBound::Largest, SeqBound::Number(7))]);
    let mailbox = "Archive".to_owned();
    assert_eq!(
        parse("a COPY 2:4,*:7 Archive"),
        Command::Copy { uid: false, set: set.clone(), mailbox: mailbox.clone() }
    );
    assert_eq!(parse("a uid move 2:4,*:7 Archive"), Command::Move { uid: true, set, mailbox });
    assert_eq!(
        parse("a UID COPY $ inbox"),
        Command::Copy { uid: true, set: SequenceSet::Saved, mailbox: "INBOX".into() }
    );
    assert_eq!(bad("a COPY 1"), "expected a mailbox name after the sequence set");
    bad("a MOVE x y");
    bad("a COPY");
    assert_eq!(parse("a GETQUOTA \"\""), Command::GetQuota { root: String::new() });
    assert_eq!(parse("a GETQUOTAROOT inbox"), Command::GetQuotaRoot { mailbox: "INBOX".into() });
    assert_eq!(parse("a SETQUOTA \"\" (STORAGE 512 MESSAGE 1000)"), Command::SetQuota { root: String::new() });
    assert_eq!(parse("a SETQUOTA x ()"), Command::SetQuota { root: "x".into() });
    for line in ["a GETQUOTA", "a GETQUOTAROOT", "a SETQUOTA x", "a SETQUOTA x (STORAGE)", "a SETQUOTA x (STORAGE x)"] {
        bad(line);
    }
}

/// A tiny xorshift generator, so the fuzz test needs no dependency and is repeatable.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let seeds: &[&[u8]] = &[
        b"a UID FETCH 1:*,$ (BODY.PEEK[1.2.HEADER.FIELDS (a b)]<0.5> BINARY[1]) (CHANGEDSINCE 5 VANISHED)",
        b"a SEARCH RETURN (MIN) CHARSET UTF-8 OR (NOT SEEN) HEADER x \"y\" MODSEQ \"/flags/\\\\Seen\" all 5",
        b"a APPEND x (\\Seen) \" 1-Jan-2024 00:00:00 +0100\" ~{5+}",
        b"a LIST (SUBSCRIBED) \"\" (% *) RETURN (STATUS (MESSAGES))",
        b"a SELECT INBOX (QRESYNC (1 2 1:5 (1 2)))",
        b"a STORE 1 (UNCHANGEDSINCE 3) +FLAGS.SILENT \\Seen",
        b"a LOGIN {5}",
    ];
    let alphabet = b"() {}[]<>.:,*$%\\\"~+-0123456789AaBFLSUX \r\n\0\xff";
    for round in 0..20_000 {
        let mut line: Vec<u8> = if round % 2 == 0 { seeds[rng.below(seeds.len())].to_vec() } else { Vec::new() };
        for _ in 0..rng.below(8) {
            let at = rng.below(line.len() + 1);
            if rng.below(2) == 0 && at < line.len() {
                line.remove(at);
            } else if rng.below(4) == 0 {
                line.insert(at, u8::try_from(rng.next() & 0xff).unwrap_or(0));
            } else {
                line.insert(at, alphabet[rng.below(alphabet.len())]);
            }
        }
        let mut segments = vec![Segment::Text(line.clone())];
        let _ = literal_announcement(&line);
        let _ = is_message_literal(&segments);
        if let Some(announcement) = literal_announcement(&line) {
            let length = usize::try_from(announcement.length.min(8)).unwrap_or(0);
            let literal = (0..length).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            segments.push(if rng.below(2) == 0 { Segment::Literal(literal) } else { Segment::Message });
            segments
                .push(Segment::Text(seeds[rng.below(seeds.len())].get(rng.below(20)..).unwrap_or_default().to_vec()));
        }
        let _ = parse_command(&segments);
        let _ = is_message_literal(&segments);
    }
}
