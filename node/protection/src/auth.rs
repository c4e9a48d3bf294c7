//! Sender authentication with mail-auth: SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617)
//! and DMARC (RFC 7489), and the `Authentication-Results` header (RFC 8601) that records
//! them.

use std::net::IpAddr;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput,
    SpfResult,
};

use crate::verdict::{Refusal, Verdict};
use crate::{DmarcEnforcement, Envelope, ProtectionConfig};

/// The SPF results of a transaction's two identities.
#[derive(Debug, Clone)]
pub struct SenderReport {
    helo: SpfOutput,
    mail_from: SpfOutput,
}

impl SenderReport {
    /// Whether the MAIL FROM identity (or, for the null sender, the HELO identity) fails.
    pub fn fails(&self) -> bool {
        self.mail_from.result() == SpfResult::Fail
    }

    /// The result of the MAIL FROM identity, as RFC 8601 names it.
    pub fn mail_from_result(&self) -> &'static str {
        spf_name(self.mail_from.result())
    }

    /// Why SPF failed, for the refusal text.
    pub fn explanation(&self) -> String {
        match self.mail_from.explanation() {
            Some(explanation) => format!("{} ({explanation})", self.mail_from.domain()),
            None => format!("{} does not authorise your address to send its mail", self.mail_from.domain()),
        }
    }
}

fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The domain of a reverse path, or the HELO name for the null sender (RFC 7208 §2.4).
fn mail_from_domain<'a>(mail_from: &'a str, helo: &'a str) -> &'a str {
    mail_from.rsplit_once('@').map_or(helo, |(_, domain)| domain)
}

/// SPF of both identities (RFC 7208 §2.3 HELO, §2.4 MAIL FROM; for `<>` the MAIL FROM
/// check is the HELO check).
pub(crate) async fn check_spf(
    authenticator: &MessageAuthenticator,
    hostname: &str,
    client: IpAddr,
    helo: &str,
    mail_from: &str,
) -> SenderReport {
    let helo_output = authenticator.verify_spf(SpfParameters::verify_ehlo(client, helo, hostname)).await;
    let mail_from_output = if mail_from.is_empty() {
        helo_output.clone()
    } else {
        authenticator.verify_spf(SpfParameters::verify_mail_from(client, helo, hostname, mail_from)).await
    };
    SenderReport { helo: helo_output, mail_from: mail_from_output }
}

/// What sender authentication made of a message.
pub(crate) struct Authentication {
    /// The `Authentication-Results` header field, CRLF included.
    pub header: String,
    /// A DMARC `reject` policy applied.
    pub refusal: Option<Refusal>,
    /// A DMARC `quarantine` policy applied.
    pub quarantine: bool,
    /// The envelope sender's domain is authenticated (SPF pass for MAIL FROM, or DMARC
    /// pass): only then may an allowed-sender entry count.
    pub sender_verified: bool,
    /// (check, result, score) for the verdict.
    checks: Vec<(&'static str, String, f32)>,
}

impl Authentication {
    /// Adds the results and their scores to `verdict`.
    pub fn score(&self, verdict: &mut Verdict) {
        for (check, result, score) in &self.checks {
            verdict.add(*check, result.clone(), *score);
        }
    }
}

fn dkim_name(result: &DkimResult) -> String {
    match result {
        DkimResult::Pass => "pass".into(),
        DkimResult::Neutral(error) => format!("neutral ({error})"),
        DkimResult::Fail(error) => format!("fail ({error})"),
        DkimResult::PermError(error) => format!("permerror ({error})"),
        DkimResult::TempError(error) => format!("temperror ({error})"),
        DkimResult::None => "none".into(),
    }
}

fn dmarc_name(result: &DmarcResult) -> String {
    match result {
        DmarcResult::Pass => "pass".into(),
        DmarcResult::Fail(error) => format!("fail ({error})"),
        DmarcResult::TempError(error) => format!("temperror ({error})"),
        DmarcResult::PermError(error) => format!("permerror ({error})"),
        DmarcResult::None => "none".into(),
    }
}

/// Scores of SPF results (a fail counts more than a softfail; neither decides alone).
fn spf_score(result: SpfResult) -> f32 {
    match result {
        SpfResult::Fail => 3.0,
        SpfResult::SoftFail => 1.0,
        SpfResult::PermError => 0.5,
        _ => 0.0,
    }
}

/// DKIM, ARC and DMARC of a message, with the SPF results of its envelope.
pub(crate) async fn check_message(
    authenticator: &MessageAuthenticator,
    config: &ProtectionConfig,
    envelope: &Envelope<'_>,
    message: &[u8],
) -> Authentication {
    let hostname = config.hostname.as_str();
    let mut checks = Vec::new();
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        checks.push(("PARSE", "the header section could not be parsed".to_owned(), 1.0));
        return Authentication {
            header: envelope_only_header(hostname, envelope),
            refusal: None,
            quarantine: false,
            sender_verified: false,
            checks,
        };
    };
    let mut results = AuthenticationResults::new(hostname);
    let dkim = if config.dkim { authenticator.verify_dkim(&parsed).await } else { Vec::new() };
    if config.dkim {
        if dkim.is_empty() {
            checks.push(("DKIM", "none".to_owned(), 0.0));
        }
        for output in &dkim {
            let domain = output.signature().map(|signature| signature.d.as_str()).unwrap_or("");
            let score = match output.result() {
                DkimResult::Pass => -0.5,
                DkimResult::Fail(_) => 2.0,
                DkimResult::PermError(_) => 1.0,
                _ => 0.0,
            };
            checks.push(("DKIM", format!("{} d={domain}", dkim_name(output.result())), score));
        }
        results = results.with_dkim_results(&dkim, parsed.from());
    }
    let arc: Option<ArcOutput> = if config.arc { Some(authenticator.verify_arc(&parsed).await) } else { None };
    if let Some(arc) = &arc {
        checks.push(("ARC", dkim_name(arc.result()), 0.0));
        results = results.with_arc_result(arc, envelope.client);
    }
    let spf = match envelope.sender {
        Some(sender) => {
            results = results
                .with_spf_ehlo_result(&sender.helo, envelope.client, envelope.helo)
                .with_spf_mailfrom_result(&sender.mail_from, envelope.client, envelope.mail_from, envelope.helo);
            checks.push(("SPF", spf_name(sender.mail_from.result()).to_owned(), spf_score(sender.mail_from.result())));
            sender.mail_from.clone()
        }
        None => SpfOutput::new(mail_from_domain(envelope.mail_from, envelope.helo).to_owned()),
    };
    let mut refusal = None;
    let mut quarantine = false;
    let mut sender_verified = spf.result() == SpfResult::Pass;
    if let Some(enforcement) = config.dmarc {
        let domain = mail_from_domain(envelope.mail_from, envelope.helo);
        let dmarc = authenticator.verify_dmarc(DmarcParameters::new(&parsed, &dkim, domain, &spf)).await;
        let failed = matches!(dmarc.result(), DmarcResult::Fail(_));
        // DMARC authenticates the From: domain: it vouches for the envelope sender only
        // when that is the same domain.
        sender_verified |= dmarc.result() == DmarcResult::Pass && dmarc.domain().eq_ignore_ascii_case(domain);
        let policy = dmarc.policy();
        let score = if failed {
            3.0
        } else if dmarc.result() == DmarcResult::Pass {
            -0.5
        } else {
            0.0
        };
        let policy_name = match policy {
            Policy::Reject => "reject",
            Policy::Quarantine => "quarantine",
            Policy::None | Policy::Unspecified => "none",
        };
        checks.push((
            "DMARC",
            format!("{} header.from={} policy={policy_name}", dmarc_name(&dmarc.result()), dmarc.domain()),
            score,
        ));
        results = results.with_dmarc_result(&dmarc);
        // RFC 7489 §6.6.4: a failing message is handled as the From: domain's policy asks,
        // unless local policy says otherwise (§6.7; `dmarc_policy = "tag"`).
        if failed && enforcement == DmarcEnforcement::Enforce {
            match policy {
                Policy::Reject => {
                    refusal = Some(Refusal::permanent(
                        "5.7.1",
                        format!(
                            "rejected by the DMARC policy of {}: the message is neither SPF- nor DKIM-aligned with its From: domain",
                            dmarc.domain()
                        ),
                    ))
                }
                Policy::Quarantine => quarantine = true,
                Policy::None | Policy::Unspecified => {}
            }
        }
    }
    let mut header = String::new();
    {
        use mail_auth::common::headers::HeaderWriter;
        header.push_str(&results.to_header());
    }
    Authentication { header, refusal, quarantine, sender_verified, checks }
}

/// An `Authentication-Results` header with only the SPF results of the envelope (a message
/// not scanned, or whose header section could not be parsed).
pub(crate) fn envelope_only_header(hostname: &str, envelope: &Envelope<'_>) -> String {
    use mail_auth::common::headers::HeaderWriter;
    let mut results = AuthenticationResults::new(hostname);
    if let Some(sender) = envelope.sender {
        results = results.with_spf_ehlo_result(&sender.helo, envelope.client, envelope.helo).with_spf_mailfrom_result(
            &sender.mail_from,
            envelope.client,
            envelope.mail_from,
            envelope.helo,
        );
    }
    results.to_header()
}
