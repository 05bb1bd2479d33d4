//! `kapal.v1.SupportService` (customers: their own tickets only; any other ticket is NOT_FOUND)
//! and `kapal.v1.SupportAdminService` (role ADMIN: the queue, answers, the report).

use chrono::NaiveDateTime;
use kapal::auth;
use kapal::paging;
use kapal::proto::v1::support_admin_service_server::SupportAdminService;
use kapal::proto::v1::support_service_server::SupportService;
use kapal::proto::v1::{
    self as pb, GetSupportReportRequest, GetTicketRequest, ListTicketQueueRequest,
    ListTicketQueueResponse, ListTicketsRequest, ListTicketsResponse, OpenTicketRequest,
    OperatorReplyRequest, QueuedTicket, ReplyToTicketRequest, ResolveTicketRequest,
    SeverityFigures, SupportFigures, SupportReport, TicketAuthor, TicketSeverity, TicketThread,
};
use kapal::wire::{opt_timestamp, timestamp};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::notify::{self, Kind};
use super::store::{self, Change, Message, Owner, Ticket};
use super::{author, severity, status};
use crate::Ctx;
use crate::error::{Error, Result};

pub struct Support(pub Ctx);
pub struct SupportAdmin(pub Ctx);

/// The longest message body (characters).
const MAX_BODY: usize = 20_000;
/// How customers see operators.
const OPERATOR_NAME: &str = "Kapal support";

/// A message body: trimmed, 1-20000 characters, no control characters but line breaks and tabs.
fn check_body(body: &str) -> Result<String> {
    let b = body.trim();
    if b.is_empty() || b.chars().count() > MAX_BODY {
        return Err(Error::invalid(format!(
            "body must be 1-{MAX_BODY} characters"
        )));
    }
    if b.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Error::invalid(
            "body may not contain control characters other than line breaks and tabs",
        ));
    }
    Ok(b.to_string())
}

fn duration(d: chrono::Duration) -> prost_types::Duration {
    let seconds = d.num_seconds();
    let nanos = (d - chrono::Duration::seconds(seconds))
        .num_nanoseconds()
        .unwrap_or(0);
    prost_types::Duration {
        seconds,
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

fn ticket_to_wire(
    ctx: &Ctx,
    t: &Ticket,
    owner: &Owner,
    messages: i64,
    now: NaiveDateTime,
) -> pb::Ticket {
    pb::Ticket {
        id: t.id.clone(),
        subject: t.subject.clone(),
        severity: severity::to_wire(&t.severity) as i32,
        status: status::to_wire(&t.status) as i32,
        instance_id: t.instance_id.clone().unwrap_or_default(),
        account_id: t.account_id.clone(),
        customer_id: owner.0.clone(),
        created_at: Some(timestamp(t.created_at)),
        updated_at: Some(timestamp(t.updated_at)),
        first_response_due_at: Some(timestamp(t.first_response_due_at)),
        first_response_at: opt_timestamp(t.first_response_at),
        sla_state: ctx.support.first_response_state(t, now) as i32,
        resolved_at: opt_timestamp(t.resolved_at),
        message_count: u32::try_from(messages).unwrap_or(u32::MAX),
    }
}

/// The whole thread; `for_operator` shows operators' emails, customers see "Kapal support".
async fn thread(ctx: &Ctx, t: &Ticket, owner: &Owner, for_operator: bool) -> Result<TicketThread> {
    let messages = store::messages(ctx, &t.id).await?;
    let n = messages.len() as i64;
    Ok(TicketThread {
        ticket: Some(ticket_to_wire(ctx, t, owner, n, ctx.now())),
        messages: messages
            .into_iter()
            .map(|(m, email)| {
                let (who, name) = if m.author == author::OPERATOR {
                    let name = if for_operator {
                        email
                    } else {
                        OPERATOR_NAME.to_string()
                    };
                    (TicketAuthor::Operator, name)
                } else {
                    (TicketAuthor::Customer, owner.2.clone())
                };
                pb::TicketMessage {
                    id: m.id,
                    author: who as i32,
                    author_name: name,
                    body: m.body,
                    at: Some(timestamp(m.at)),
                }
            })
            .collect(),
    })
}

async fn tickets_to_wire(ctx: &Ctx, rows: &[(Ticket, Owner)]) -> Result<Vec<pb::Ticket>> {
    let ids: Vec<&str> = rows.iter().map(|(t, _)| t.id.as_str()).collect();
    let counts = store::message_counts(ctx, &ids).await?;
    let now = ctx.now();
    Ok(rows
        .iter()
        .map(|(t, o)| ticket_to_wire(ctx, t, o, counts.get(&t.id).copied().unwrap_or(0), now))
        .collect())
}

fn message(
    ticket_id: &str,
    who: &str,
    account_id: &str,
    body: String,
    at: NaiveDateTime,
) -> Message {
    Message {
        id: Uuid::now_v7().to_string(),
        ticket_id: ticket_id.to_string(),
        author: who.to_string(),
        author_account_id: account_id.to_string(),
        body,
        at,
    }
}

/// The first line of a body, for notices.
fn excerpt(body: &str) -> &str {
    kapal::wire::truncate(body.lines().next().unwrap_or_default(), 120)
}

#[tonic::async_trait]
impl SupportService for Support {
    async fn open_ticket(
        &self,
        req: Request<OpenTicketRequest>,
    ) -> Result<Response<TicketThread>, Status> {
        let p = auth::customer(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let subject = kapal::wire::display_text("subject", &req.subject, 200)?.to_string();
        let body = check_body(&req.body)?;
        let sev = TicketSeverity::try_from(req.severity)
            .ok()
            .and_then(severity::to_db)
            .ok_or_else(|| Error::invalid("severity must be CRITICAL, HIGH, NORMAL or LOW"))?;
        let account_id = p.account_id.to_string();
        let instance_id = match req.instance_id.trim() {
            "" => None,
            id => {
                let id = kapal::wire::uuid("instance_id", id)?.to_string();
                let owned = crate::store::instances::owned_id(&ctx.db, &account_id, &id).await?;
                Some(owned.ok_or_else(|| Error::not_found(format!("no instance {id}")))?)
            }
        };
        let now = ctx.now();
        let due = now + ctx.support.sla(sev);
        let ticket = Ticket {
            id: Uuid::now_v7().to_string(),
            account_id: account_id.clone(),
            subject,
            severity: sev.to_string(),
            status: status::OPEN.to_string(),
            instance_id,
            created_at: now,
            updated_at: now,
            first_response_due_at: due,
            first_response_at: None,
            response_due_at: Some(due),
            resolved_at: None,
            notified_level: 0,
        };
        let first = message(&ticket.id, author::CUSTOMER, &account_id, body, now);
        store::insert(ctx, &ticket, &first).await?;
        let (ticket, owner) = store::get(ctx, &ticket.id, None).await?;
        notify::send(
            ctx,
            Kind::TicketOpened,
            &ticket,
            now,
            format!(
                "New {} ticket {} from customer {}: {:?}; first response due by {} UTC.",
                ticket.severity, ticket.id, owner.0, ticket.subject, due
            ),
        )
        .await;
        Ok(Response::new(thread(ctx, &ticket, &owner, false).await?))
    }

    async fn list_tickets(
        &self,
        req: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let p = auth::customer(&req)?;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        let rows =
            store::list_for_account(&self.0, &p.account_id.to_string(), limit, cursor.as_ref())
                .await?;
        let (page, next) = paging::split(rows, limit, |(t, _)| (t.created_at, t.id.as_str()));
        Ok(Response::new(ListTicketsResponse {
            tickets: tickets_to_wire(&self.0, &page).await?,
            next_page_token: next,
        }))
    }

    async fn get_ticket(
        &self,
        req: Request<GetTicketRequest>,
    ) -> Result<Response<TicketThread>, Status> {
        let p = auth::customer(&req)?;
        let id = kapal::wire::uuid("ticket_id", &req.get_ref().ticket_id)?.to_string();
        let (t, owner) = store::get(&self.0, &id, Some(&p.account_id.to_string())).await?;
        Ok(Response::new(thread(&self.0, &t, &owner, false).await?))
    }

    async fn reply_to_ticket(
        &self,
        req: Request<ReplyToTicketRequest>,
    ) -> Result<Response<TicketThread>, Status> {
        let p = auth::customer(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let id = kapal::wire::uuid("ticket_id", &req.ticket_id)?.to_string();
        let body = check_body(&req.body)?;
        let account_id = p.account_id.to_string();
        // Only the owner's tickets: NOT_FOUND before anything is written.
        let (before, _) = store::get(ctx, &id, Some(&account_id)).await?;
        let now = ctx.now();
        let sla = ctx.support.sla(&before.severity);
        let summary = excerpt(&body).to_string();
        let m = message(&id, author::CUSTOMER, &account_id, body, now);
        let t = store::update(ctx, &id, Some(&m), |t| Change {
            status: status::OPEN,
            // An answer already owed stays due when it was; otherwise one is owed from now.
            response_due_at: Some(t.response_due_at.unwrap_or(now + sla)),
            first_response_at: t.first_response_at,
            resolved_at: None,
        })
        .await?;
        let (t, owner) = store::get(ctx, &t.id, None).await?;
        notify::send(
            ctx,
            Kind::CustomerReplied,
            &t,
            now,
            format!("Customer {} wrote on ticket {}: {summary}", owner.0, t.id),
        )
        .await;
        Ok(Response::new(thread(ctx, &t, &owner, false).await?))
    }

    async fn resolve_ticket(
        &self,
        req: Request<ResolveTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let p = auth::customer(&req)?;
        let ctx = &self.0;
        let id = kapal::wire::uuid("ticket_id", &req.get_ref().ticket_id)?.to_string();
        let (before, _) = store::get(ctx, &id, Some(&p.account_id.to_string())).await?;
        let now = ctx.now();
        let t = if before.status == status::RESOLVED {
            before
        } else {
            let t = store::update(ctx, &id, None, |t| Change {
                status: status::RESOLVED,
                response_due_at: None,
                first_response_at: t.first_response_at,
                resolved_at: Some(now),
            })
            .await?;
            notify::send(
                ctx,
                Kind::TicketResolved,
                &t,
                now,
                format!("Ticket {} was resolved by the customer.", t.id),
            )
            .await;
            t
        };
        let (t, owner) = store::get(ctx, &t.id, None).await?;
        let counts = store::message_counts(ctx, &[t.id.as_str()]).await?;
        let n = counts.get(&t.id).copied().unwrap_or(0);
        Ok(Response::new(ticket_to_wire(ctx, &t, &owner, n, now)))
    }
}

/// Mean and 90th percentile (nearest rank) of `times`; zero when empty.
fn mean_and_p90(times: &mut [chrono::Duration]) -> (chrono::Duration, chrono::Duration) {
    if times.is_empty() {
        return (chrono::Duration::zero(), chrono::Duration::zero());
    }
    times.sort();
    let total: i64 = times.iter().map(|d| d.num_milliseconds()).sum();
    let mean = chrono::Duration::milliseconds(total / times.len() as i64);
    let rank = (times.len() * 9).div_ceil(10).max(1);
    (mean, times[rank - 1])
}

/// First-response figures of `tickets` at `now`.
fn figures(settings: &super::Settings, tickets: &[&Ticket], now: NaiveDateTime) -> SupportFigures {
    let mut f = SupportFigures {
        opened: tickets.len() as u64,
        ..Default::default()
    };
    let mut times = Vec::new();
    for t in tickets {
        if let Some(at) = t.first_response_at {
            f.responded += 1;
            times.push(at - t.created_at);
        }
        match settings.first_response_state(t, now) {
            pb::SlaState::Breached => {
                f.judged += 1;
                f.breached += 1;
            }
            pb::SlaState::Met if t.first_response_at.is_some() => f.judged += 1,
            _ => {}
        }
    }
    if f.judged > 0 {
        f.breach_rate = f.breached as f64 / f.judged as f64;
    }
    let (mean, p90) = mean_and_p90(&mut times);
    f.mean_first_response = Some(duration(mean));
    f.p90_first_response = Some(duration(p90));
    f
}

#[tonic::async_trait]
impl SupportAdminService for SupportAdmin {
    async fn list_ticket_queue(
        &self,
        req: Request<ListTicketQueueRequest>,
    ) -> Result<Response<ListTicketQueueResponse>, Status> {
        auth::admin(&req)?;
        let ctx = &self.0;
        let limit = kapal::wire::page_size(req.get_ref().page_size);
        let cursor = paging::parse(&req.get_ref().page_token)?;
        let rows = store::queue(ctx, limit, cursor.as_ref()).await?;
        let (page, next) = paging::split(rows, limit, |(t, _)| {
            (t.response_due_at.unwrap_or(t.created_at), t.id.as_str())
        });
        let wire = tickets_to_wire(ctx, &page).await?;
        let now = ctx.now();
        let tickets = page
            .iter()
            .zip(wire)
            .map(|((t, owner), w)| {
                let due = t.response_due_at.unwrap_or(t.first_response_due_at);
                QueuedTicket {
                    ticket: Some(w),
                    email: owner.1.clone(),
                    response_due_at: Some(timestamp(due)),
                    time_left: Some(duration(due - now)),
                    sla: Some(duration(ctx.support.sla(&t.severity))),
                }
            })
            .collect();
        Ok(Response::new(ListTicketQueueResponse {
            tickets,
            next_page_token: next,
        }))
    }

    async fn get_ticket_as_admin(
        &self,
        req: Request<GetTicketRequest>,
    ) -> Result<Response<TicketThread>, Status> {
        auth::admin(&req)?;
        let id = kapal::wire::uuid("ticket_id", &req.get_ref().ticket_id)?.to_string();
        let (t, owner) = store::get(&self.0, &id, None).await?;
        Ok(Response::new(thread(&self.0, &t, &owner, true).await?))
    }

    async fn reply_as_operator(
        &self,
        req: Request<OperatorReplyRequest>,
    ) -> Result<Response<TicketThread>, Status> {
        let p = auth::admin(&req)?.clone();
        let req = req.into_inner();
        let ctx = &self.0;
        let id = kapal::wire::uuid("ticket_id", &req.ticket_id)?.to_string();
        let body = check_body(&req.body)?;
        store::get(ctx, &id, None).await?;
        let now = ctx.now();
        let summary = excerpt(&body).to_string();
        let m = message(&id, author::OPERATOR, &p.account_id.to_string(), body, now);
        let resolve = req.resolve;
        let t = store::update(ctx, &id, Some(&m), |t| Change {
            status: if resolve {
                status::RESOLVED
            } else {
                status::WAITING_ON_CUSTOMER
            },
            response_due_at: None,
            first_response_at: Some(t.first_response_at.unwrap_or(now)),
            resolved_at: resolve.then_some(now),
        })
        .await?;
        notify::send(
            ctx,
            if resolve {
                Kind::TicketResolved
            } else {
                Kind::OperatorReplied
            },
            &t,
            now,
            format!(
                "Kapal support answered your ticket {:?}: {summary}",
                t.subject
            ),
        )
        .await;
        let (t, owner) = store::get(ctx, &t.id, None).await?;
        Ok(Response::new(thread(ctx, &t, &owner, true).await?))
    }

    async fn get_support_report(
        &self,
        req: Request<GetSupportReportRequest>,
    ) -> Result<Response<SupportReport>, Status> {
        auth::admin(&req)?;
        let ctx = &self.0;
        let now = ctx.now();
        let req = req.into_inner();
        let to = match &req.to {
            Some(t) => kapal::wire::from_timestamp(t)
                .ok_or_else(|| Error::invalid("to is not a valid time"))?
                .naive_utc(),
            None => now,
        };
        let from = match &req.from {
            Some(t) => kapal::wire::from_timestamp(t)
                .ok_or_else(|| Error::invalid("from is not a valid time"))?
                .naive_utc(),
            None => to - chrono::Duration::days(30),
        };
        if from >= to {
            return Err(Error::invalid("from must be before to").into());
        }
        let tickets = store::opened_between(ctx, from, to).await?;
        let all: Vec<&Ticket> = tickets.iter().collect();
        let by_severity = [
            TicketSeverity::Critical,
            TicketSeverity::High,
            TicketSeverity::Normal,
            TicketSeverity::Low,
        ]
        .into_iter()
        .filter_map(|s| {
            let db = severity::to_db(s)?;
            let of: Vec<&Ticket> = tickets.iter().filter(|t| t.severity == db).collect();
            Some(SeverityFigures {
                severity: s as i32,
                sla: Some(duration(ctx.support.sla(db))),
                figures: Some(figures(&ctx.support, &of, now)),
            })
        })
        .collect();
        Ok(Response::new(SupportReport {
            total: Some(figures(&ctx.support, &all, now)),
            by_severity,
            unresolved: u64::try_from(store::unresolved(ctx).await?).unwrap_or(0),
            from: Some(timestamp(from)),
            to: Some(timestamp(to)),
            generated_at: Some(timestamp(now)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_line_breaks_and_refuse_other_controls() {
        assert_eq!(check_body("  a\nb\t c ").ok(), Some("a\nb\t c".into()));
        assert!(check_body("   ").is_err());
        assert!(check_body("a\u{0}b").is_err());
        assert!(check_body(&"x".repeat(MAX_BODY + 1)).is_err());
    }

    #[test]
    fn p90_is_the_nearest_rank() {
        let mut t: Vec<_> = (1..=10).map(chrono::Duration::minutes).collect();
        let (mean, p90) = mean_and_p90(&mut t);
        assert_eq!(mean, chrono::Duration::seconds(330));
        assert_eq!(p90, chrono::Duration::minutes(9));
        assert_eq!(
            mean_and_p90(&mut []),
            (chrono::Duration::zero(), chrono::Duration::zero())
        );
    }
}
