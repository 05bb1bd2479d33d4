//! The client commands of `kapal`, one file per area of the public API (`kapal login`,
//! `kapal catalog`, `kapal order`, `kapal instances`, ..., `kapal admin ...`), and [`run`], which
//! sends each parsed command (see `args`) to its function.
//!
//! A command builds a `connect::Ctx` from its global options, calls the gateway with the
//! generated `kapal.v1` clients, and hands its answer to `Ctx::print`: each answer is a type
//! implementing `output::Render`, defined next to the command with its text and its JSON.

pub mod account;
pub mod admin;
pub mod billing_ops;
pub mod catalog;
pub mod diagnostics;
pub mod instance;
pub mod order;
pub mod session;
pub mod subscription;
pub mod support;
pub mod token;

use crate::args::{ClientCommand, PasswordCommand, SessionsCommand, TokenCommand};
use instance::Action;

/// Runs one client command.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Signup(a) => account::signup(a).await,
        ClientCommand::Login(a) => account::login(a).await,
        ClientCommand::Logout(g) => account::logout(g).await,
        ClientCommand::Whoami(g) => account::whoami(g).await,
        ClientCommand::VerifyEmail(a) => account::verify_email(a).await,
        ClientCommand::ResendVerification(g) => account::resend_verification(g).await,
        ClientCommand::ResetPassword(a) => account::reset_password(a).await,
        ClientCommand::Catalog(g) => catalog::catalog(g).await,
        ClientCommand::App(a) => catalog::app(a).await,
        ClientCommand::Order(a) => order::order(a).await,
        ClientCommand::Orders(g) => order::orders(g).await,
        ClientCommand::Instances(g) => instance::instances(g).await,
        ClientCommand::Instance(a) => instance::instance(a).await,
        ClientCommand::Watch(a) => instance::watch(a).await,
        ClientCommand::Stop(a) => instance::instance_action(a, Action::Stop).await,
        ClientCommand::Start(a) => instance::instance_action(a, Action::Start).await,
        ClientCommand::Restart(a) => instance::instance_action(a, Action::Restart).await,
        ClientCommand::Delete(a) => instance::delete(a).await,
        ClientCommand::Subscriptions(g) => subscription::subscriptions(g).await,
        ClientCommand::Invoices(a) => subscription::invoices(a).await,
        ClientCommand::Cancel(a) => subscription::cancel(a).await,
        ClientCommand::AutoRenew(a) => subscription::auto_renew(a).await,
        ClientCommand::Usage(a) => instance::usage(a).await,
        ClientCommand::History(a) => diagnostics::history(a).await,
        ClientCommand::Diagnose(a) => diagnostics::diagnose(a).await,
        ClientCommand::ChangePlan(a) => subscription::change_plan(a).await,
        ClientCommand::Events(a) => subscription::events(a).await,
        ClientCommand::Admin(cmd) => admin::run(cmd).await,
        ClientCommand::Token(TokenCommand::Create(a)) => token::token_create(a).await,
        ClientCommand::Token(TokenCommand::List(g)) => token::token_list(g).await,
        ClientCommand::Token(TokenCommand::Revoke(a)) => token::token_revoke(a).await,
        ClientCommand::Password(PasswordCommand::Change(a)) => session::password_change(a).await,
        ClientCommand::Sessions(SessionsCommand::List(g)) => session::sessions_list(g).await,
        ClientCommand::Sessions(SessionsCommand::Revoke(a)) => session::sessions_revoke(a).await,
        ClientCommand::Support(cmd) => support::run(cmd).await,
    }
}

/// What the tests of several commands share.
#[cfg(test)]
pub mod fixtures {
    use chrono::DateTime;

    pub fn at(rfc: &str) -> Option<prost_types::Timestamp> {
        let t = DateTime::parse_from_rfc3339(rfc).expect("time");
        Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        })
    }

    pub const GIB: i64 = 1024 * 1024 * 1024;
    pub const MIB: i64 = 1024 * 1024;
}
