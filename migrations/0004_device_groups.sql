-- Device groups managed over the API (issue #16; README, "Device groups").
--
-- The table itself came with the geofences (0002): fences and rules name
-- groups, and every write to it bumps `config_version` and sends NOTIFY
-- `fieldcast_config`, which bridges and gateways reload on. What the API
-- adds is reading it by group: a token's `groups` claim selects
-- `device_id IN (SELECT device_id FROM device_groups WHERE group_name =
-- ANY(...))` in the history queries, which the primary key (device first)
-- cannot serve.
CREATE INDEX IF NOT EXISTS device_groups_group_idx ON device_groups (group_name, device_id);
