//! Support tickets: `kapal support open|list|show|reply|resolve` for customers, and for
//! operators `kapal support queue|answer|report` (and `show --operator`).

use serde::Serialize;

use kapal::proto::v1::{
    GetSupportReportRequest, GetTicketRequest, ListTicketQueueRequest, ListTicketsRequest,
    OpenTicketRequest, OperatorReplyRequest, QueuedTicket, ReplyToTicketRequest,
    ResolveTicketRequest, SlaState, SupportFigures, SupportReport, Ticket, TicketAuthor,
    TicketSeverity, TicketStatus, TicketThread,
};

use crate::args::{
    SupportAnswerArgs, SupportCommand, SupportListArgs, SupportOpenArgs, SupportReplyArgs,
    SupportReportArgs, SupportShowArgs, TicketArg,
};
use crate::connect::{Ctx, RpcResult as _};
use crate::output::{Render, Table, dash, key_values, short, time, ts_json};

/// Runs one `kapal support` command.
pub async fn run(cmd: SupportCommand) -> anyhow::Result<()> {
    match cmd {
        SupportCommand::Open(a) => open(a).await,
        SupportCommand::List(a) => list(a).await,
        SupportCommand::Show(a) => show(a).await,
        SupportCommand::Reply(a) => reply(a).await,
        SupportCommand::Resolve(a) => resolve(a).await,
        SupportCommand::Queue(a) => queue(a).await,
        SupportCommand::Answer(a) => answer(a).await,
        SupportCommand::Report(a) => report(a).await,
    }
}

async fn open(a: SupportOpenArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let t = ctx
        .support()?
        .open_ticket(OpenTicketRequest {
            subject: a.subject,
            body: a.body,
            severity: a.severity.wire() as i32,
            instance_id: a.instance.unwrap_or_default(),
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Thread(t))
}

async fn list(a: SupportListArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let r = ctx
        .support()?
        .list_tickets(ListTicketsRequest {
            page_size: a.limit,
            page_token: String::new(),
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Tickets(r.tickets))
}

async fn show(a: SupportShowArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let req = GetTicketRequest { ticket_id: a.id };
    let t = if a.operator {
        ctx.support_admin()?
            .get_ticket_as_admin(req)
            .await
            .or_fail_as_operator(&ctx)?
    } else {
        ctx.support()?.get_ticket(req).await.or_fail(&ctx)?
    };
    ctx.print(&Thread(t))
}

async fn reply(a: SupportReplyArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let t = ctx
        .support()?
        .reply_to_ticket(ReplyToTicketRequest {
            ticket_id: a.id,
            body: a.body,
        })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Thread(t))
}

async fn resolve(a: TicketArg) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let t = ctx
        .support()?
        .resolve_ticket(ResolveTicketRequest { ticket_id: a.id })
        .await
        .or_fail(&ctx)?;
    ctx.print(&Tickets(vec![t]))
}

async fn queue(a: SupportListArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let r = ctx
        .support_admin()?
        .list_ticket_queue(ListTicketQueueRequest {
            page_size: a.limit,
            page_token: String::new(),
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Queue(r.tickets))
}

async fn answer(a: SupportAnswerArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let t = ctx
        .support_admin()?
        .reply_as_operator(OperatorReplyRequest {
            ticket_id: a.id,
            body: a.body,
            resolve: a.resolve,
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Thread(t))
}

async fn report(a: SupportReportArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&a.global)?;
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::days(i64::from(a.days));
    let r = ctx
        .support_admin()?
        .get_support_report(GetSupportReportRequest {
            from: Some(prost_types::Timestamp {
                seconds: from.timestamp(),
                nanos: 0,
            }),
            to: None,
        })
        .await
        .or_fail_as_operator(&ctx)?;
    ctx.print(&Report(r))
}

fn severity(v: i32) -> String {
    let name = TicketSeverity::try_from(v)
        .unwrap_or(TicketSeverity::Unspecified)
        .as_str_name();
    short(name, "TICKET_SEVERITY_").to_lowercase()
}

fn status(v: i32) -> String {
    let name = TicketStatus::try_from(v)
        .unwrap_or(TicketStatus::Unspecified)
        .as_str_name();
    short(name, "TICKET_STATUS_")
        .to_lowercase()
        .replace('_', " ")
}

fn sla(v: i32) -> String {
    let name = SlaState::try_from(v)
        .unwrap_or(SlaState::Unspecified)
        .as_str_name();
    short(name, "SLA_STATE_").to_lowercase().replace('_', " ")
}

/// `1h30m`, or `-20m` once passed.
fn signed(d: Option<&prost_types::Duration>) -> String {
    let secs = d.map(|d| d.seconds).unwrap_or(0);
    let text = crate::output::format_duration(std::time::Duration::from_secs(secs.unsigned_abs()));
    if secs < 0 { format!("-{text}") } else { text }
}

#[derive(Serialize)]
struct TicketJson {
    id: String,
    subject: String,
    severity: String,
    status: String,
    instance_id: Option<String>,
    customer_id: String,
    created_at: Option<String>,
    updated_at: Option<String>,
    first_response_due_at: Option<String>,
    first_response_at: Option<String>,
    sla: String,
    resolved_at: Option<String>,
    messages: u32,
}

impl From<&Ticket> for TicketJson {
    fn from(t: &Ticket) -> Self {
        TicketJson {
            id: t.id.clone(),
            subject: t.subject.clone(),
            severity: severity(t.severity),
            status: status(t.status),
            instance_id: (!t.instance_id.is_empty()).then(|| t.instance_id.clone()),
            customer_id: t.customer_id.clone(),
            created_at: ts_json(t.created_at.as_ref()),
            updated_at: ts_json(t.updated_at.as_ref()),
            first_response_due_at: ts_json(t.first_response_due_at.as_ref()),
            first_response_at: ts_json(t.first_response_at.as_ref()),
            sla: sla(t.sla_state),
            resolved_at: ts_json(t.resolved_at.as_ref()),
            messages: t.message_count,
        }
    }
}

/// A list of tickets.
struct Tickets(Vec<Ticket>);

impl Render for Tickets {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No tickets.\n".to_string();
        }
        let mut t = Table::new(&[
            "ID", "SEVERITY", "STATUS", "SLA", "MESSAGES", "UPDATED", "SUBJECT",
        ]);
        for k in &self.0 {
            t.row(vec![
                k.id.clone(),
                severity(k.severity),
                status(k.status),
                sla(k.sla_state),
                k.message_count.to_string(),
                time(k.updated_at.as_ref()),
                k.subject.clone(),
            ]);
        }
        t.render()
    }

    fn json(&self) -> impl Serialize {
        #[derive(Serialize)]
        struct J {
            tickets: Vec<TicketJson>,
        }
        J {
            tickets: self.0.iter().map(TicketJson::from).collect(),
        }
    }
}

/// A ticket with its messages.
struct Thread(TicketThread);

#[derive(Serialize)]
struct MessageJson {
    id: String,
    author: &'static str,
    author_name: String,
    body: String,
    at: Option<String>,
}

impl Render for Thread {
    fn text(&self) -> String {
        let Some(t) = &self.0.ticket else {
            return "No ticket.\n".to_string();
        };
        let mut out = key_values(&[
            ("Ticket", t.id.clone()),
            ("Subject", t.subject.clone()),
            ("Severity", severity(t.severity)),
            ("Status", status(t.status)),
            ("Instance", dash(&t.instance_id)),
            ("Opened", time(t.created_at.as_ref())),
            ("First response due", time(t.first_response_due_at.as_ref())),
            ("First response", time(t.first_response_at.as_ref())),
            ("SLA", sla(t.sla_state)),
        ]);
        for m in &self.0.messages {
            out.push_str(&format!(
                "\n--- {} ({}) ---\n{}\n",
                m.author_name,
                time(m.at.as_ref()),
                m.body
            ));
        }
        out
    }

    fn json(&self) -> impl Serialize {
        #[derive(Serialize)]
        struct J {
            ticket: Option<TicketJson>,
            messages: Vec<MessageJson>,
        }
        J {
            ticket: self.0.ticket.as_ref().map(TicketJson::from),
            messages: self
                .0
                .messages
                .iter()
                .map(|m| MessageJson {
                    id: m.id.clone(),
                    author: if m.author == TicketAuthor::Operator as i32 {
                        "operator"
                    } else {
                        "customer"
                    },
                    author_name: m.author_name.clone(),
                    body: m.body.clone(),
                    at: ts_json(m.at.as_ref()),
                })
                .collect(),
        }
    }
}

/// The operators' queue.
struct Queue(Vec<QueuedTicket>);

impl Render for Queue {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "No ticket is waiting on an operator.\n".to_string();
        }
        let mut t = Table::new(&[
            "ID",
            "SEVERITY",
            "SLA",
            "DUE",
            "TIME LEFT",
            "CUSTOMER",
            "SUBJECT",
        ]);
        for q in &self.0 {
            let Some(k) = &q.ticket else { continue };
            t.row(vec![
                k.id.clone(),
                severity(k.severity),
                sla(k.sla_state),
                time(q.response_due_at.as_ref()),
                signed(q.time_left.as_ref()),
                q.email.clone(),
                k.subject.clone(),
            ]);
        }
        t.render()
    }

    fn json(&self) -> impl Serialize {
        #[derive(Serialize)]
        struct Q {
            ticket: Option<TicketJson>,
            email: String,
            response_due_at: Option<String>,
            time_left_seconds: i64,
            sla_seconds: i64,
        }
        #[derive(Serialize)]
        struct J {
            tickets: Vec<Q>,
        }
        J {
            tickets: self
                .0
                .iter()
                .map(|q| Q {
                    ticket: q.ticket.as_ref().map(TicketJson::from),
                    email: q.email.clone(),
                    response_due_at: ts_json(q.response_due_at.as_ref()),
                    time_left_seconds: q.time_left.map(|d| d.seconds).unwrap_or(0),
                    sla_seconds: q.sla.map(|d| d.seconds).unwrap_or(0),
                })
                .collect(),
        }
    }
}

/// The support report.
struct Report(SupportReport);

#[derive(Serialize)]
struct FiguresJson {
    opened: u64,
    responded: u64,
    judged: u64,
    breached: u64,
    breach_rate: f64,
    mean_first_response_seconds: i64,
    p90_first_response_seconds: i64,
}

impl From<&SupportFigures> for FiguresJson {
    fn from(f: &SupportFigures) -> Self {
        FiguresJson {
            opened: f.opened,
            responded: f.responded,
            judged: f.judged,
            breached: f.breached,
            breach_rate: f.breach_rate,
            mean_first_response_seconds: f.mean_first_response.map(|d| d.seconds).unwrap_or(0),
            p90_first_response_seconds: f.p90_first_response.map(|d| d.seconds).unwrap_or(0),
        }
    }
}

impl Render for Report {
    fn text(&self) -> String {
        let r = &self.0;
        let mut out = format!(
            "Tickets opened {} to {}; {} not resolved now.\n\n",
            time(r.from.as_ref()),
            time(r.to.as_ref()),
            r.unresolved
        );
        let mut t = Table::new(&[
            "SEVERITY",
            "SLA",
            "OPENED",
            "ANSWERED",
            "BREACHED",
            "BREACH RATE",
            "MEAN FIRST RESPONSE",
            "P90",
        ]);
        let row = |name: String, sla_d: Option<&prost_types::Duration>, f: &SupportFigures| {
            vec![
                name,
                sla_d.map(|d| signed(Some(d))).unwrap_or_else(|| "-".into()),
                f.opened.to_string(),
                f.responded.to_string(),
                format!("{}/{}", f.breached, f.judged),
                format!("{:.0}%", f.breach_rate * 100.0),
                signed(f.mean_first_response.as_ref()),
                signed(f.p90_first_response.as_ref()),
            ]
        };
        for s in &r.by_severity {
            if let Some(f) = &s.figures {
                t.row(row(severity(s.severity), s.sla.as_ref(), f));
            }
        }
        if let Some(f) = &r.total {
            t.row(row("all".into(), None, f));
        }
        out.push_str(&t.render());
        out
    }

    fn json(&self) -> impl Serialize {
        #[derive(Serialize)]
        struct S {
            severity: String,
            sla_seconds: i64,
            figures: Option<FiguresJson>,
        }
        #[derive(Serialize)]
        struct J {
            from: Option<String>,
            to: Option<String>,
            unresolved: u64,
            total: Option<FiguresJson>,
            by_severity: Vec<S>,
        }
        let r = &self.0;
        J {
            from: ts_json(r.from.as_ref()),
            to: ts_json(r.to.as_ref()),
            unresolved: r.unresolved,
            total: r.total.as_ref().map(FiguresJson::from),
            by_severity: r
                .by_severity
                .iter()
                .map(|s| S {
                    severity: severity(s.severity),
                    sla_seconds: s.sla.map(|d| d.seconds).unwrap_or(0),
                    figures: s.figures.as_ref().map(FiguresJson::from),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fixtures::at;

    #[test]
    fn the_queue_says_what_is_due_and_how_long_is_left() {
        let q = Queue(vec![QueuedTicket {
            ticket: Some(Ticket {
                id: "t1".into(),
                subject: "502 everywhere".into(),
                severity: TicketSeverity::Critical as i32,
                sla_state: SlaState::AtRisk as i32,
                ..Default::default()
            }),
            email: "ani@example.com".into(),
            response_due_at: at("2026-12-07T12:00:00Z"),
            time_left: Some(prost_types::Duration {
                seconds: -1200,
                nanos: 0,
            }),
            sla: None,
        }]);
        let text = q.text();
        assert!(text.contains("critical"), "{text}");
        assert!(text.contains("at risk"), "{text}");
        assert!(text.contains("-20m"), "{text}");
        assert!(text.contains("2026-12-07T12:00:00Z"), "{text}");
    }
}
