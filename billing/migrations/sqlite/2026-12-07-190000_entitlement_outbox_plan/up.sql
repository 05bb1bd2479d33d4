-- The plan the subscription pays for from this entitlement change on, sent to the control-plane
-- so the instance is rendered with that plan's resources (a plan change applied at renewal, a
-- converted trial). NULL for rows written before: the instance keeps its plan.
ALTER TABLE entitlement_outbox ADD COLUMN plan_id TEXT;
