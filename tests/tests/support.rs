//! Support tickets through the real gateway and control-plane, on SQLite and PostgreSQL, with the
//! control-plane on a manual clock (issue 17): a customer's critical ticket nobody answers is an
//! at-risk alert before its 2-hour SLA ends and a breach alert at 2 h, and its notices are sent
//! once each; an operator's answer ends both; another customer can neither read nor answer it
//! (NOT_FOUND); customers get PERMISSION_DENIED on the operators' side; the report has the
//! first-response times and the breach rate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::SubsecRound as _;
use kapal::clock::ManualClock;
use kapal::proto::v1::*;
use kapal::testing::Backend;
use kapal_control_plane::support::notify::{AlertNotice, Kind, Notice, Notifier};
use kapal_tests::app::{Customer, TestApp};
use tonic::Code;

kapal::on_both_backends!(worker_threads = 4; critical_ticket_sla_alerts_and_isolation);

/// Keeps the notices the control-plane sends, to look at what an operator would be told.
#[derive(Default)]
struct Inbox(Mutex<Vec<Notice>>);

#[tonic::async_trait]
impl Notifier for Inbox {
    async fn notify(&self, n: &Notice) -> Result<(), String> {
        self.0.lock().map_err(|e| e.to_string())?.push(n.clone());
        Ok(())
    }

    /// Pushed alerts are not this test's (control-plane/tests/admin.rs looks at them).
    async fn alert(&self, _: &AlertNotice) -> Result<(), String> {
        Ok(())
    }
}

impl Inbox {
    fn kinds_of(&self, ticket: &str) -> Vec<Kind> {
        self.0
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|n| n.ticket_id == ticket)
                    .map(|n| n.kind)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The ticket alerts now: (kind, severity, subject).
async fn ticket_alerts(admin: &mut Customer) -> anyhow::Result<Vec<(String, i32, String)>> {
    Ok(admin
        .clients
        .admin
        .list_alerts(ListAlertsRequest {})
        .await?
        .into_inner()
        .alerts
        .into_iter()
        .filter(|a| a.kind.starts_with("ticket_"))
        .map(|a| (a.kind, a.severity, a.subject))
        .collect())
}

/// Waits until the SLA sweep (every 100 ms here) has sent `want` for `ticket`.
async fn notices_become(inbox: &Inbox, ticket: &str, want: &[Kind]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = inbox.kinds_of(ticket);
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "notices of {ticket}: want {want:?}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

async fn critical_ticket_sla_alerts_and_isolation(backend: Backend) -> anyhow::Result<()> {
    // Whole seconds: both databases keep the times exactly, so the time left is exact too.
    let clock = ManualClock::new(chrono::Utc::now().trunc_subsecs(0));
    let inbox = Arc::new(Inbox::default());
    let settings = kapal_control_plane::support::Settings {
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let app = TestApp::builder()
        .backend(backend)
        .with_control_plane_clock(clock.clone())
        .with_support(settings, inbox.clone())
        .start()
        .await?;
    let mut alice = app.customer("alice").await?;
    let mut bob = app.customer("bob").await?;
    let mut admin = app.admin().await?;

    let opened = alice
        .clients
        .support
        .open_ticket(OpenTicketRequest {
            subject: "WordPress answers 502".into(),
            body: "Since this morning every page is a 502.\nPlease help.".into(),
            severity: TicketSeverity::Critical as i32,
            instance_id: String::new(),
        })
        .await?
        .into_inner();
    let ticket = opened.ticket.clone().expect("a ticket");
    let id = ticket.id.clone();
    assert_eq!(ticket.status, TicketStatus::Open as i32);
    assert_eq!(ticket.sla_state, SlaState::OnTrack as i32);
    let created = ticket.created_at.expect("created_at").seconds;
    let due = ticket.first_response_due_at.expect("due").seconds;
    assert_eq!(due - created, 2 * 3600, "a critical ticket's SLA is 2 h");
    assert_eq!(opened.messages.len(), 1);
    assert_eq!(opened.messages[0].author, TicketAuthor::Customer as i32);

    // Another customer: not even its existence.
    for s in [
        bob.clients
            .support
            .get_ticket(GetTicketRequest {
                ticket_id: id.clone(),
            })
            .await
            .expect_err("not bob's"),
        bob.clients
            .support
            .reply_to_ticket(ReplyToTicketRequest {
                ticket_id: id.clone(),
                body: "I am support, send me your password".into(),
            })
            .await
            .expect_err("not bob's"),
        bob.clients
            .support
            .resolve_ticket(ResolveTicketRequest {
                ticket_id: id.clone(),
            })
            .await
            .expect_err("not bob's"),
    ] {
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }
    let bobs = bob
        .clients
        .support
        .list_tickets(ListTicketsRequest::default())
        .await?
        .into_inner();
    assert!(bobs.tickets.is_empty(), "{bobs:?}");
    // Bob's failed reply wrote nothing.
    let thread = alice
        .clients
        .support
        .get_ticket(GetTicketRequest {
            ticket_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(thread.messages.len(), 1, "{thread:?}");
    // Customers have no operator side.
    let s = alice
        .clients
        .support_admin
        .list_ticket_queue(ListTicketQueueRequest::default())
        .await
        .expect_err("a customer");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = alice
        .clients
        .support_admin
        .reply_as_operator(OperatorReplyRequest {
            ticket_id: id.clone(),
            body: "answering myself".into(),
            resolve: true,
        })
        .await
        .expect_err("a customer");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // The operators' queue: due in 2 h; no alert yet.
    let queue = admin
        .clients
        .support_admin
        .list_ticket_queue(ListTicketQueueRequest::default())
        .await?
        .into_inner();
    assert_eq!(queue.tickets.len(), 1);
    assert_eq!(queue.tickets[0].email, alice.email);
    assert_eq!(
        queue.tickets[0].time_left.expect("time left").seconds,
        2 * 3600
    );
    assert_eq!(ticket_alerts(&mut admin).await?, vec![]);
    notices_become(&inbox, &id, &[Kind::TicketOpened]).await?;

    // 89 minutes on: still on track.
    clock.advance(minutes(89));
    assert_eq!(ticket_alerts(&mut admin).await?, vec![]);
    // 91 minutes: less than a quarter of the SLA left, at risk, before the 2 h are over.
    clock.advance(minutes(2));
    assert_eq!(
        ticket_alerts(&mut admin).await?,
        vec![(
            "ticket_sla_at_risk".to_string(),
            AlertSeverity::Warning as i32,
            id.clone()
        )]
    );
    notices_become(&inbox, &id, &[Kind::TicketOpened, Kind::SlaAtRisk]).await?;
    let queue = admin
        .clients
        .support_admin
        .list_ticket_queue(ListTicketQueueRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        queue.tickets[0].time_left.expect("time left").seconds,
        29 * 60
    );
    assert_eq!(
        queue.tickets[0].ticket.as_ref().expect("ticket").sla_state,
        SlaState::AtRisk as i32
    );

    // 2 h: breached.
    clock.advance(minutes(29));
    assert_eq!(
        ticket_alerts(&mut admin).await?,
        vec![(
            "ticket_sla_breached".to_string(),
            AlertSeverity::Critical as i32,
            id.clone()
        )]
    );
    notices_become(
        &inbox,
        &id,
        &[Kind::TicketOpened, Kind::SlaAtRisk, Kind::SlaBreached],
    )
    .await?;

    // An operator answers: the alert ends, the ticket waits on the customer, who sees the
    // answer from "Kapal support"; the late answer stays a breach.
    clock.advance(minutes(10));
    let answered = admin
        .clients
        .support_admin
        .reply_as_operator(OperatorReplyRequest {
            ticket_id: id.clone(),
            body: "We restarted the database pod; it is back.".into(),
            resolve: false,
        })
        .await?
        .into_inner();
    assert_eq!(answered.messages[1].author_name, admin.email);
    assert_eq!(ticket_alerts(&mut admin).await?, vec![]);
    let seen = alice
        .clients
        .support
        .get_ticket(GetTicketRequest {
            ticket_id: id.clone(),
        })
        .await?
        .into_inner();
    let t = seen.ticket.expect("ticket");
    assert_eq!(t.status, TicketStatus::WaitingOnCustomer as i32);
    assert_eq!(t.sla_state, SlaState::Breached as i32);
    assert_eq!(
        t.first_response_at.expect("answered").seconds - created,
        130 * 60
    );
    assert_eq!(seen.messages.len(), 2);
    assert_eq!(seen.messages[1].author, TicketAuthor::Operator as i32);
    assert_eq!(seen.messages[1].author_name, "Kapal support");
    assert!(
        admin
            .clients
            .support_admin
            .list_ticket_queue(ListTicketQueueRequest::default())
            .await?
            .into_inner()
            .tickets
            .is_empty()
    );
    notices_become(
        &inbox,
        &id,
        &[
            Kind::TicketOpened,
            Kind::SlaAtRisk,
            Kind::SlaBreached,
            Kind::OperatorReplied,
        ],
    )
    .await?;
    // Hours later nothing more is raised about it.
    clock.advance(minutes(300));
    assert_eq!(ticket_alerts(&mut admin).await?, vec![]);

    // A second critical ticket answered in 20 minutes never alerts.
    let second = alice
        .clients
        .support
        .open_ticket(OpenTicketRequest {
            subject: "Backup question".into(),
            body: "Where are my backups?".into(),
            severity: TicketSeverity::Critical as i32,
            instance_id: String::new(),
        })
        .await?
        .into_inner()
        .ticket
        .expect("ticket");
    clock.advance(minutes(20));
    admin
        .clients
        .support_admin
        .reply_as_operator(OperatorReplyRequest {
            ticket_id: second.id.clone(),
            body: "Daily, kept 7 days.".into(),
            resolve: true,
        })
        .await?;
    clock.advance(minutes(200));
    assert_eq!(ticket_alerts(&mut admin).await?, vec![]);

    // The customer follows up on the first ticket: it is open again and owes an answer.
    let follow = alice
        .clients
        .support
        .reply_to_ticket(ReplyToTicketRequest {
            ticket_id: id.clone(),
            body: "It is down again.".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        follow.ticket.expect("ticket").status,
        TicketStatus::Open as i32
    );
    let queue = admin
        .clients
        .support_admin
        .list_ticket_queue(ListTicketQueueRequest::default())
        .await?
        .into_inner();
    assert_eq!(queue.tickets.len(), 1);
    assert_eq!(queue.tickets[0].ticket.as_ref().expect("t").id, id);

    // The report: two critical tickets, one answered late (130 min), one in time (20 min).
    let report = admin
        .clients
        .support_admin
        .get_support_report(GetSupportReportRequest::default())
        .await?
        .into_inner();
    let total = report.total.expect("total");
    assert_eq!(
        (total.opened, total.responded, total.judged, total.breached),
        (2, 2, 2, 1)
    );
    assert!((total.breach_rate - 0.5).abs() < 1e-9, "{total:?}");
    assert_eq!(total.mean_first_response.expect("mean").seconds, 75 * 60);
    assert_eq!(total.p90_first_response.expect("p90").seconds, 130 * 60);
    assert_eq!(report.unresolved, 1);
    let critical = &report.by_severity[0];
    assert_eq!(critical.severity, TicketSeverity::Critical as i32);
    assert_eq!(critical.sla.expect("sla").seconds, 2 * 3600);
    let s = alice
        .clients
        .support_admin
        .get_support_report(GetSupportReportRequest::default())
        .await
        .expect_err("a customer");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // The customer's own list has both, newest first; resolving takes it out of the queue.
    let mine = alice
        .clients
        .support
        .list_tickets(ListTicketsRequest::default())
        .await?
        .into_inner();
    let ids: Vec<_> = mine.tickets.iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, vec![second.id.clone(), id.clone()]);
    let resolved = alice
        .clients
        .support
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(resolved.status, TicketStatus::Resolved as i32);
    assert!(
        admin
            .clients
            .support_admin
            .list_ticket_queue(ListTicketQueueRequest::default())
            .await?
            .into_inner()
            .tickets
            .is_empty()
    );
    Ok(())
}
