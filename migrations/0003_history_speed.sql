-- History that stays fast (issue #16; README, "History at scale").
--
-- location_days: one row per device and UTC day that has locations, with
-- the day's first and last fix time. `GET /api/devices?at=` reads it to
-- find, per device, the one or two daily partitions that can hold its last
-- fix before the instant, then probes only those through the primary key;
-- without it every device would probe every partition (90 of them at the
-- default retention), and the list of devices would need a scan of
-- `locations`.
--
-- A statement-level trigger keeps it: one aggregate over the rows a
-- statement inserted (the bridge's batch insert, or a bulk COPY), not a
-- trigger call per row. Rows go in sorted, so two bridges writing batches
-- of the same devices lock them in the same order and cannot deadlock.

CREATE TABLE IF NOT EXISTS location_days (
    device_id text        NOT NULL,
    day       date        NOT NULL,
    first_ts  timestamptz NOT NULL,
    last_ts   timestamptz NOT NULL,
    PRIMARY KEY (device_id, day)
);
CREATE INDEX IF NOT EXISTS location_days_day_idx ON location_days (day, device_id);

CREATE OR REPLACE FUNCTION fc_location_days() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO location_days AS d (device_id, day, first_ts, last_ts)
    SELECT device_id, (ts AT TIME ZONE 'UTC')::date, min(ts), max(ts)
      FROM fc_new_locations
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (device_id, day) DO UPDATE
       SET first_ts = least(d.first_ts, excluded.first_ts),
           last_ts  = greatest(d.last_ts, excluded.last_ts)
     WHERE excluded.first_ts < d.first_ts OR excluded.last_ts > d.last_ts;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS locations_days ON locations;
CREATE TRIGGER locations_days AFTER INSERT ON locations
    REFERENCING NEW TABLE AS fc_new_locations
    FOR EACH STATEMENT EXECUTE FUNCTION fc_location_days();

-- Devices with history before the trigger existed.
INSERT INTO location_days (device_id, day, first_ts, last_ts)
SELECT device_id, (ts AT TIME ZONE 'UTC')::date, min(ts), max(ts)
  FROM locations GROUP BY 1, 2
ON CONFLICT DO NOTHING;
