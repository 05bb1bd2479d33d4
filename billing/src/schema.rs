//! Billing's tables, one definition for both backends (see `migrations/`).

diesel::table! {
    subscriptions (id) {
        id -> Text,
        account_id -> Text,
        order_id -> Text,
        instance_id -> Text,
        app_id -> Text,
        plan_id -> Text,
        status -> Text,
        price_amount -> BigInt,
        currency -> Text,
        trial_end -> Nullable<Timestamp>,
        current_period_start -> Timestamp,
        current_period_end -> Timestamp,
        auto_renew -> Bool,
        cancel_at_period_end -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    subscription_schedule (subscription_id) {
        subscription_id -> Text,
        next_plan_id -> Nullable<Text>,
        next_price_amount -> Nullable<BigInt>,
        deadline -> Nullable<Timestamp>,
        next_charge_at -> Nullable<Timestamp>,
        ended_at -> Nullable<Timestamp>,
        cleaned_up_at -> Nullable<Timestamp>,
        next_action_at -> Nullable<Timestamp>,
        version -> BigInt,
        lease_until -> Nullable<Timestamp>,
        renewal_notice_for -> Nullable<Timestamp>,
    }
}

diesel::table! {
    entitlement_outbox (id) {
        id -> BigInt,
        subscription_id -> Text,
        instance_id -> Text,
        entitlement -> Text,
        at -> Timestamp,
        attempts -> Integer,
        delivered_at -> Nullable<Timestamp>,
        next_attempt_at -> Nullable<Timestamp>,
        lease_until -> Nullable<Timestamp>,
        cause -> Nullable<Text>,
        last_error -> Nullable<Text>,
        plan_id -> Nullable<Text>,
    }
}

diesel::table! {
    invoice_counter (id) {
        id -> Integer,
        last_number -> BigInt,
    }
}

diesel::table! {
    invoices (id) {
        id -> Text,
        number -> BigInt,
        subscription_id -> Text,
        account_id -> Text,
        period_start -> Timestamp,
        period_end -> Timestamp,
        amount -> BigInt,
        currency -> Text,
        status -> Text,
        charging_until -> Nullable<Timestamp>,
        failure_reason -> Nullable<Text>,
        created_at -> Timestamp,
        paid_at -> Nullable<Timestamp>,
        payment_provider -> Nullable<Text>,
        payment_reference -> Nullable<Text>,
        credited_amount -> BigInt,
    }
}

diesel::table! {
    credit_notes (id) {
        id -> Text,
        invoice_id -> Text,
        subscription_id -> Text,
        account_id -> Text,
        amount -> BigInt,
        currency -> Text,
        reason -> Text,
        actor_account_id -> Text,
        status -> Text,
        provider -> Text,
        reference -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        attempts -> Integer,
        next_attempt_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    payments (id) {
        id -> Text,
        invoice_id -> Text,
        attempt -> Integer,
        idempotency_key -> Text,
        provider -> Text,
        amount -> BigInt,
        currency -> Text,
        status -> Text,
        reference -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    subscription_events (id) {
        id -> BigInt,
        subscription_id -> Text,
        at -> Timestamp,
        from_status -> Nullable<Text>,
        to_status -> Text,
        cause -> Text,
        actor -> Text,
    }
}

diesel::joinable!(invoices -> subscriptions (subscription_id));
diesel::joinable!(payments -> invoices (invoice_id));
diesel::joinable!(credit_notes -> invoices (invoice_id));
diesel::joinable!(subscription_events -> subscriptions (subscription_id));
diesel::joinable!(entitlement_outbox -> subscriptions (subscription_id));
diesel::joinable!(subscription_schedule -> subscriptions (subscription_id));

diesel::allow_tables_to_appear_in_same_query!(
    subscriptions,
    invoice_counter,
    invoices,
    credit_notes,
    payments,
    subscription_events,
    entitlement_outbox,
    subscription_schedule,
);
