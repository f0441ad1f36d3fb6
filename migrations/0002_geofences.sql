-- Geofences, alert rules and their webhook outbox (issue #15;
-- docs/geofences.md).
--
-- Plain GeoJSON in jsonb, no PostGIS: every containment test runs in the
-- bridges, against an in-memory R-tree built from these rows, so the
-- database only stores and versions them; PostGIS would add a package to
-- every install and answer no query we make.
--
-- Every change to the configuration tables bumps one version
-- (`config_version`) and sends NOTIFY `fieldcast_config` with it, in the
-- same transaction. A bridge loads fences, rules and device groups with the
-- version in one snapshot, and passes that version with each membership it
-- computes, so a bridge still holding an older snapshot never overrides a
-- membership decided on a newer one (docs/geofences.md).

CREATE TABLE IF NOT EXISTS config_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint  NOT NULL
);
INSERT INTO config_version (one, version) VALUES (true, 1) ON CONFLICT DO NOTHING;

-- A fence's `feature` is the canonical GeoJSON Feature the API answers
-- (with `id`). A deleted fence keeps its row (`deleted_at`) so that the
-- exit it causes still has the fence's name.
CREATE TABLE IF NOT EXISTS geofences (
    id         bigserial   PRIMARY KEY,
    feature    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

-- A rule as the API answers it (with `id`); deleted ones kept likewise.
CREATE TABLE IF NOT EXISTS alert_rules (
    id         bigserial   PRIMARY KEY,
    rule       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

-- The groups a device belongs to, which fences and rules may name.
CREATE TABLE IF NOT EXISTS device_groups (
    device_id  text NOT NULL,
    group_name text NOT NULL,
    PRIMARY KEY (device_id, group_name)
);

CREATE OR REPLACE FUNCTION fieldcast_config_changed() RETURNS trigger AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE config_version SET version = version + 1 RETURNING version INTO v;
    PERFORM pg_notify('fieldcast_config', v::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS geofences_changed ON geofences;
CREATE TRIGGER geofences_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON geofences
    FOR EACH STATEMENT EXECUTE FUNCTION fieldcast_config_changed();
DROP TRIGGER IF EXISTS alert_rules_changed ON alert_rules;
CREATE TRIGGER alert_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON alert_rules
    FOR EACH STATEMENT EXECUTE FUNCTION fieldcast_config_changed();
DROP TRIGGER IF EXISTS device_groups_changed ON device_groups;
CREATE TRIGGER device_groups_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_groups
    FOR EACH STATEMENT EXECUTE FUNCTION fieldcast_config_changed();

-- Alerts owed to webhook endpoints. A row is written in the transaction
-- that stores its event, so an alert stored is an alert owed; senders take
-- rows with FOR UPDATE SKIP LOCKED (any number of bridges), delete a row
-- on a 2xx and otherwise push `next_attempt` back with backoff and jitter
-- until the row is older than the give-up age. `body` is the exact text
-- signed and sent.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           bigserial   PRIMARY KEY,
    device_id    text        NOT NULL,
    event_id     text        NOT NULL,
    url          text        NOT NULL,
    secret       text        NOT NULL,
    body         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    next_attempt timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    UNIQUE (device_id, event_id, url)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due_idx ON webhook_outbox (next_attempt);
