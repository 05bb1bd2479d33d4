//! The rows of support tickets and their messages, and the queries the API and the SLA sweep
//! make. Listings page by keys (see [`kapal::paging`]): a customer's tickets by
//! `(created_at, id)` newest first, the operators' queue by `(response_due_at, id)` due first.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kapal::paging::Cursor;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::schema::{accounts, support_messages, support_tickets};

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = support_tickets)]
pub struct Ticket {
    pub id: String,
    pub account_id: String,
    pub subject: String,
    pub severity: String,
    pub status: String,
    pub instance_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub first_response_due_at: NaiveDateTime,
    pub first_response_at: Option<NaiveDateTime>,
    /// When an operator's answer is due; `None` when none is owed.
    pub response_due_at: Option<NaiveDateTime>,
    pub resolved_at: Option<NaiveDateTime>,
    /// The SLA notice sent for the current `response_due_at`: 0 none, 1 at risk, 2 breached.
    pub notified_level: i32,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = support_messages)]
pub struct Message {
    pub id: String,
    pub ticket_id: String,
    pub author: String,
    pub author_account_id: String,
    pub body: String,
    pub at: NaiveDateTime,
}

/// A ticket's customer: customer id, email, display name.
pub type Owner = (String, String, String);

/// At most this many tickets owing an answer are looked at per alert listing or sweep.
const MAX_OWING: i64 = 1000;

/// Writes a new ticket with its first message.
pub async fn insert(ctx: &Ctx, ticket: &Ticket, first: &Message) -> Result<()> {
    let mut conn = ctx.db.get().await?;
    kapal::db!(&mut conn, |c| {
        use diesel_async::AsyncConnection as _;
        c.transaction(async |c| {
            diesel::insert_into(support_tickets::table)
                .values(ticket)
                .execute(c)
                .await?;
            diesel::insert_into(support_messages::table)
                .values(first)
                .execute(c)
                .await?;
            Ok::<_, diesel::result::Error>(())
        })
        .await
    })?;
    Ok(())
}

/// The ticket `id` with its customer; with `account_id`, only if it is that account's (NOT_FOUND
/// otherwise, the same as for a ticket that does not exist).
pub async fn get(ctx: &Ctx, id: &str, account_id: Option<&str>) -> Result<(Ticket, Owner)> {
    let mut conn = ctx.db.read().await?;
    let found: Option<(Ticket, Owner)> = kapal::db!(&mut conn, |c| {
        let mut q = support_tickets::table
            .inner_join(accounts::table)
            .filter(support_tickets::id.eq(id))
            .select((
                Ticket::as_select(),
                (
                    accounts::customer_id,
                    accounts::email,
                    accounts::display_name,
                ),
            ))
            .into_boxed();
        if let Some(a) = account_id {
            q = q.filter(support_tickets::account_id.eq(a));
        }
        q.first(c).await.optional()
    })?;
    found.ok_or_else(|| Error::not_found(format!("no ticket {id}")))
}

/// The messages of a ticket, oldest first, with the email of each author.
pub async fn messages(ctx: &Ctx, ticket_id: &str) -> Result<Vec<(Message, String)>> {
    let mut conn = ctx.db.read().await?;
    let rows: Vec<Message> = kapal::db!(&mut conn, |c| support_messages::table
        .filter(support_messages::ticket_id.eq(ticket_id))
        .order((support_messages::at.asc(), support_messages::id.asc()))
        .select(Message::as_select())
        .load(c)
        .await)?;
    let authors: Vec<&str> = rows.iter().map(|m| m.author_account_id.as_str()).collect();
    let emails: Vec<(String, String)> = kapal::db!(&mut conn, |c| accounts::table
        .filter(accounts::id.eq_any(&authors))
        .select((accounts::id, accounts::email))
        .load(c)
        .await)?;
    let emails: std::collections::HashMap<String, String> = emails.into_iter().collect();
    Ok(rows
        .into_iter()
        .map(|m| {
            let email = emails
                .get(&m.author_account_id)
                .cloned()
                .unwrap_or_default();
            (m, email)
        })
        .collect())
}

/// The number of messages of each ticket in `ids`.
pub async fn message_counts(
    ctx: &Ctx,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut conn = ctx.db.read().await?;
    let rows: Vec<(String, i64)> = kapal::db!(&mut conn, |c| support_messages::table
        .filter(support_messages::ticket_id.eq_any(ids))
        .group_by(support_messages::ticket_id)
        .select((support_messages::ticket_id, diesel::dsl::count_star()))
        .load(c)
        .await)?;
    Ok(rows.into_iter().collect())
}

/// One page (`limit + 1` rows) of an account's tickets, newest first, after `cursor`.
pub async fn list_for_account(
    ctx: &Ctx,
    account_id: &str,
    limit: i64,
    cursor: Option<&Cursor>,
) -> Result<Vec<(Ticket, Owner)>> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = support_tickets::table
            .inner_join(accounts::table)
            .filter(support_tickets::account_id.eq(account_id))
            .select((
                Ticket::as_select(),
                (
                    accounts::customer_id,
                    accounts::email,
                    accounts::display_name,
                ),
            ))
            .order((
                support_tickets::created_at.desc(),
                support_tickets::id.desc(),
            ))
            .limit(limit + 1)
            .into_boxed();
        if let Some(cur) = cursor {
            q = q.filter(
                support_tickets::created_at
                    .lt(cur.at)
                    .or(support_tickets::created_at
                        .eq(cur.at)
                        .and(support_tickets::id.lt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}

/// One page (`limit + 1` rows) of the tickets owing an answer, due first, after `cursor`
/// (keyed by `(response_due_at, id)`).
pub async fn queue(ctx: &Ctx, limit: i64, cursor: Option<&Cursor>) -> Result<Vec<(Ticket, Owner)>> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| {
        let mut q = support_tickets::table
            .inner_join(accounts::table)
            .filter(support_tickets::response_due_at.is_not_null())
            .select((
                Ticket::as_select(),
                (
                    accounts::customer_id,
                    accounts::email,
                    accounts::display_name,
                ),
            ))
            .order((
                support_tickets::response_due_at.asc(),
                support_tickets::id.asc(),
            ))
            .limit(limit + 1)
            .into_boxed();
        if let Some(cur) = cursor {
            q = q.filter(
                support_tickets::response_due_at
                    .gt(cur.at)
                    .or(support_tickets::response_due_at
                        .eq(cur.at)
                        .and(support_tickets::id.gt(cur.id.clone()))),
            );
        }
        q.load(c).await
    })?)
}

/// The tickets owing an answer, due first (for alerts and the sweep).
pub async fn owing(ctx: &Ctx) -> Result<Vec<(Ticket, Owner)>> {
    queue(ctx, MAX_OWING - 1, None).await
}

/// What a new message does to its ticket.
pub struct Change {
    pub status: &'static str,
    pub response_due_at: Option<NaiveDateTime>,
    pub first_response_at: Option<NaiveDateTime>,
    pub resolved_at: Option<NaiveDateTime>,
}

/// Adds `message` (if any) to the ticket and applies `change` computed from the ticket as it
/// is in the transaction, in one transaction; returns the ticket as it is after.
pub async fn update(
    ctx: &Ctx,
    ticket_id: &str,
    message: Option<&Message>,
    change: impl FnOnce(&Ticket) -> Change + Send,
) -> Result<Ticket> {
    let now = ctx.now();
    let mut conn = ctx.db.get().await?;
    let updated: Ticket = kapal::db!(&mut conn, |c| {
        use diesel_async::AsyncConnection as _;
        c.transaction(async |c| {
            let t: Ticket = support_tickets::table
                .find(ticket_id)
                .select(Ticket::as_select())
                .first(c)
                .await?;
            let ch = change(&t);
            // A new owed answer starts with no notice sent.
            let notified = if ch.response_due_at == t.response_due_at {
                t.notified_level
            } else {
                0
            };
            if let Some(m) = message {
                diesel::insert_into(support_messages::table)
                    .values(m)
                    .execute(c)
                    .await?;
            }
            diesel::update(support_tickets::table.find(ticket_id))
                .set((
                    support_tickets::status.eq(ch.status),
                    support_tickets::response_due_at.eq(ch.response_due_at),
                    support_tickets::first_response_at.eq(ch.first_response_at),
                    support_tickets::resolved_at.eq(ch.resolved_at),
                    support_tickets::notified_level.eq(notified),
                    support_tickets::updated_at.eq(now),
                ))
                .execute(c)
                .await?;
            support_tickets::table
                .find(ticket_id)
                .select(Ticket::as_select())
                .first(c)
                .await
        })
        .await
    })?;
    Ok(updated)
}

/// Records that the notice of `level` was sent for the answer due at `due`; false when another
/// sweep did already (or the ticket changed since it was read).
pub async fn claim_notice(
    ctx: &Ctx,
    ticket_id: &str,
    due: NaiveDateTime,
    from: i32,
    level: i32,
) -> Result<bool> {
    let mut conn = ctx.db.get().await?;
    let n = kapal::db!(&mut conn, |c| diesel::update(
        support_tickets::table
            .filter(support_tickets::id.eq(ticket_id))
            .filter(support_tickets::response_due_at.eq(due))
            .filter(support_tickets::notified_level.eq(from))
    )
    .set(support_tickets::notified_level.eq(level))
    .execute(c)
    .await)?;
    Ok(n == 1)
}

/// Tickets opened in `[from, to)` (for the report).
pub async fn opened_between(
    ctx: &Ctx,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> Result<Vec<Ticket>> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| support_tickets::table
        .filter(support_tickets::created_at.ge(from))
        .filter(support_tickets::created_at.lt(to))
        .select(Ticket::as_select())
        .load(c)
        .await)?)
}

/// The number of tickets not resolved.
pub async fn unresolved(ctx: &Ctx) -> Result<i64> {
    let mut conn = ctx.db.read().await?;
    Ok(kapal::db!(&mut conn, |c| support_tickets::table
        .filter(support_tickets::status.ne(super::status::RESOLVED))
        .count()
        .get_result(c)
        .await)?)
}
