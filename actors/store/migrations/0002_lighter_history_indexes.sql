-- 0002: fewer indexes on the history tables the outbox writes in bulk.
--
-- Every index is maintained on every insert, and index maintenance was most of PostgreSQL's
-- time in the outbox drain. Kept: what makes a replay insert nothing twice, and what a query
-- of ours reads by.
--   * notifications and calls_history have a natural unique key, which the producers' dedup_key
--     only restates ("call:<token>:<user>"): the natural key alone refuses a replayed row
--     (the writer inserts with ON CONFLICT DO NOTHING on a replay, which covers any unique key).
--     The dedup_key column stays, informative, without its index.
--   * Time ranges (reports, admin stats, channel statistics) read rows written in time order:
--     a BRIN index serves them for a fraction of a B-tree's upkeep.
--   * A user's notifications are found by the natural key's leading chat_id; a channel's calls
--     by the (channel_id, token_key) key; nothing reads the activity log by action.
--   * The surrogate ids (an identity sequence and a primary-key index each) are read by
--     nothing: the unique key each table already has becomes its primary key.

ALTER TABLE notifications DROP CONSTRAINT notifications_dedup_key_key;
ALTER TABLE notifications DROP COLUMN id;
ALTER TABLE notifications DROP CONSTRAINT notifications_chat_id_token_key_kind_threshold_key;
ALTER TABLE notifications ADD PRIMARY KEY (chat_id, token_key, kind, threshold);
DROP INDEX notifications_token_idx;
DROP INDEX notifications_user_idx;
CREATE INDEX notifications_sent_at_brin ON notifications USING brin (sent_at);

ALTER TABLE calls_history DROP CONSTRAINT calls_history_dedup_key_key;
ALTER TABLE calls_history DROP COLUMN id;
ALTER TABLE calls_history DROP CONSTRAINT calls_history_channel_id_token_key_key;
ALTER TABLE calls_history ADD PRIMARY KEY (channel_id, token_key);
DROP INDEX calls_history_channel_idx;
DROP INDEX calls_history_called_at_idx;
CREATE INDEX calls_history_called_at_brin ON calls_history USING brin (called_at);

ALTER TABLE activity_log DROP COLUMN id;
ALTER TABLE activity_log DROP CONSTRAINT activity_log_dedup_key_key;
ALTER TABLE activity_log ADD PRIMARY KEY (dedup_key);
DROP INDEX activity_log_at_idx;
DROP INDEX activity_log_action_idx;
CREATE INDEX activity_log_at_brin ON activity_log USING brin (at);

ALTER TABLE settings_changes DROP COLUMN id;
ALTER TABLE settings_changes DROP CONSTRAINT settings_changes_dedup_key_key;
ALTER TABLE settings_changes ADD PRIMARY KEY (dedup_key);
