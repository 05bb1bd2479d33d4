//! The control-plane's tables (one definition for SQLite and PostgreSQL).

diesel::table! {
    accounts (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        customer_id -> Text,
        display_name -> Text,
        role -> Text,
        created_at -> Timestamp,
        email_verified_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    email_codes (id) {
        id -> Text,
        account_id -> Text,
        purpose -> Text,
        code_hash -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        attempts -> BigInt,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    tokens (id) {
        id -> Text,
        account_id -> Text,
        kind -> Text,
        name -> Text,
        token_hash -> Text,
        prefix -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        scope -> Text,
        last_used_at -> Nullable<Timestamp>,
        user_agent -> Text,
        client_address -> Text,
    }
}

diesel::table! {
    orders (id) {
        id -> Text,
        account_id -> Text,
        idempotency_key -> Text,
        app_id -> Text,
        plan_id -> Text,
        status -> Text,
        failure_reason -> Text,
        amount -> BigInt,
        currency -> Text,
        subscription_id -> Nullable<Text>,
        instance_id -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    instances (id) {
        id -> Text,
        account_id -> Text,
        order_id -> Text,
        app_id -> Text,
        plan_id -> Text,
        hostname -> Text,
        namespace -> Text,
        subscription_id -> Nullable<Text>,
        desired_state -> Text,
        status -> Text,
        status_reason -> Text,
        restart_generation -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        ready_at -> Nullable<Timestamp>,
        entitlement -> Text,
        entitlement_sequence -> BigInt,
        entitlement_cause -> Text,
        entitlement_at -> Nullable<Timestamp>,
        data_deleted_after -> Nullable<Timestamp>,
        status_sequence -> BigInt,
    }
}

diesel::table! {
    instance_events (id) {
        id -> Text,
        instance_id -> Text,
        status -> Text,
        reason -> Text,
        at -> Timestamp,
        actor -> Text,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        actor_account_id -> Text,
        action -> Text,
        target -> Text,
        detail -> Text,
        at -> Timestamp,
        actor_email -> Text,
        subject_account_id -> Text,
    }
}

diesel::table! {
    support_tickets (id) {
        id -> Text,
        account_id -> Text,
        subject -> Text,
        severity -> Text,
        status -> Text,
        instance_id -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        first_response_due_at -> Timestamp,
        first_response_at -> Nullable<Timestamp>,
        response_due_at -> Nullable<Timestamp>,
        resolved_at -> Nullable<Timestamp>,
        notified_level -> Integer,
    }
}

diesel::table! {
    support_messages (id) {
        id -> Text,
        ticket_id -> Text,
        author -> Text,
        author_account_id -> Text,
        body -> Text,
        at -> Timestamp,
    }
}

diesel::table! {
    login_failures (email) {
        email -> Text,
        failures -> BigInt,
        blocked_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(tokens -> accounts (account_id));
diesel::joinable!(instances -> accounts (account_id));
diesel::table! {
    account_suspensions (account_id) {
        account_id -> Text,
        reason -> Text,
        actor_account_id -> Text,
        suspended_at -> Timestamp,
        instance_ids -> Text,
    }
}

diesel::joinable!(instance_events -> instances (instance_id));
diesel::joinable!(support_tickets -> accounts (account_id));
diesel::joinable!(support_messages -> support_tickets (ticket_id));
diesel::table! {
    pushed_alerts (kind, subject) {
        kind -> Text,
        subject -> Text,
        severity -> Integer,
        message -> Text,
        opened_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    accounts,
    tokens,
    orders,
    instances,
    instance_events,
    audit_log,
    support_tickets,
    support_messages,
    account_suspensions
);
