-- Fieldcast history tables (PROTOCOL.md §6).
--
-- locations is range-partitioned by day on ts; the bridge creates partitions
-- ahead of time and drops those older than FIELDCAST_RETENTION. The primary
-- key (device_id, ts) is both the history dedup rule ("at most once per
-- device and ts, the first accepted is kept") and the index that makes a
-- one-device, one-day track query an index range scan inside one partition.

CREATE TABLE IF NOT EXISTS locations (
    device_id   text             NOT NULL,
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    alt         double precision,
    speed       double precision,
    heading     double precision,
    accuracy    double precision,
    received_at timestamptz      NOT NULL,
    PRIMARY KEY (device_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE IF NOT EXISTS events (
    device_id   text        NOT NULL,
    event_id    text        NOT NULL,
    ts          timestamptz NOT NULL,
    kind        text        NOT NULL,
    severity    text        NOT NULL,
    data        jsonb,
    received_at timestamptz NOT NULL,
    UNIQUE (device_id, event_id)
);
CREATE INDEX IF NOT EXISTS events_ts_idx ON events (ts, device_id, event_id);
CREATE INDEX IF NOT EXISTS events_device_ts_idx ON events (device_id, ts);

-- One row per status report; (device_id, ts) identifies a report, so a
-- redelivered one is stored once.
CREATE TABLE IF NOT EXISTS device_status (
    device_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    online      boolean     NOT NULL,
    battery     double precision,
    signal      double precision,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, ts)
);
