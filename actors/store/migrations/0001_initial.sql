-- 0001: the initial schema.
--
-- Two kinds of tables:
--   * state and money (users, settings, presets, subscriptions, orders, payments, coupons,
--     coupon_redemptions) are written directly, in transactions, and carry foreign keys;
--   * history (settings_changes, notifications, calls_history, activity_log) is written by the
--     outbox writer in batches. Every history row carries a producer-made `dedup_key` (unique),
--     so replaying a batch after a crash inserts nothing twice: write them with
--     `INSERT ... ON CONFLICT DO NOTHING` (COPY into a temporary table first for speed).
--     History tables have no foreign keys on purpose: a batch must never fail because the row
--     it refers to is not there (yet), or the outbox would be stuck on it.
--
-- Chat ids are Telegram ids (bigint; groups and channels are negative). Times are timestamptz.
-- Money: SOL in lamports (bigint), USD in numeric(12, 2). Closed vocabularies are CHECKed text.

CREATE TABLE users (
    chat_id     bigint PRIMARY KEY CHECK (chat_id <> 0),
    username    text CHECK (username IS NULL OR length(username) BETWEEN 1 AND 64),
    first_name  text CHECK (first_name IS NULL OR length(first_name) <= 256),
    -- false once Telegram answers 403 (the user blocked the bot); true again when they return
    active      boolean NOT NULL DEFAULT true,
    -- set by an admin: a locked user gets nothing and cannot use the bot
    locked      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_reachable_idx ON users (chat_id) WHERE active AND NOT locked;
CREATE INDEX users_username_idx ON users (lower(username)) WHERE username IS NOT NULL;

-- Current filter settings, one row per user (history in settings_changes).
CREATE TABLE settings (
    chat_id     bigint PRIMARY KEY REFERENCES users (chat_id) ON DELETE CASCADE,
    filters     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(filters) = 'object'),
    -- bumped on every change, so a late writer cannot overwrite a newer version
    version     integer NOT NULL DEFAULT 1 CHECK (version > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settings_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key   text NOT NULL UNIQUE CHECK (length(dedup_key) BETWEEN 1 AND 200),
    chat_id     bigint NOT NULL,
    -- who made the change: the user themself, or an admin's chat id
    changed_by  bigint,
    before      jsonb CHECK (before IS NULL OR jsonb_typeof(before) = 'object'),
    after       jsonb NOT NULL CHECK (jsonb_typeof(after) = 'object'),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settings_changes_user_idx ON settings_changes (chat_id, changed_at DESC);

-- Named filter sets that admins manage and users apply in one step.
CREATE TABLE presets (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 64),
    description text CHECK (description IS NULL OR length(description) <= 1000),
    filters     jsonb NOT NULL CHECK (jsonb_typeof(filters) = 'object'),
    -- admin chat id; NULL for the presets that ship with callwatch
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX presets_name_key ON presets (lower(name));

CREATE TABLE coupons (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL CHECK (code ~ '^[A-Za-z0-9_-]{3,32}$'),
    -- percent: value % off; fixed: value USD off; free_days: value days granted, no payment
    kind        text NOT NULL CHECK (kind IN ('percent', 'fixed', 'free_days')),
    value       numeric(12, 2) NOT NULL CHECK (value > 0),
    -- restrict to one plan; NULL = any plan
    plan        text CHECK (plan IS NULL OR plan ~ '^[a-z0-9_]{1,32}$'),
    max_uses    integer CHECK (max_uses IS NULL OR max_uses > 0),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at  timestamptz,
    disabled_at timestamptz,
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'percent' OR value <= 100),
    CHECK (kind <> 'free_days' OR value = trunc(value)),
    -- the database itself refuses to redeem a coupon past its limit
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
-- codes are case-insensitive: SUMMER24 and summer24 are one coupon
CREATE UNIQUE INDEX coupons_code_key ON coupons (upper(code));

CREATE TABLE orders (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chat_id         bigint NOT NULL REFERENCES users (chat_id),
    plan            text NOT NULL CHECK (plan ~ '^[a-z0-9_]{1,32}$'),
    method          text NOT NULL CHECK (method IN ('sol', 'nowpayments')),
    amount_lamports bigint CHECK (amount_lamports > 0),
    -- the price in USD (for a SOL order: the quote the lamports were computed from)
    amount_usd      numeric(12, 2) CHECK (amount_usd > 0),
    coupon_id       bigint REFERENCES coupons (id),
    -- Solana Pay reference key, or the order id we hand to NOWPayments
    reference_key   text NOT NULL UNIQUE CHECK (length(reference_key) BETWEEN 1 AND 128),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'paid', 'expired', 'cancelled', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    paid_at         timestamptz,
    CHECK (method <> 'sol' OR amount_lamports IS NOT NULL),
    CHECK (method <> 'nowpayments' OR amount_usd IS NOT NULL),
    CHECK (expires_at > created_at),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL))
);
CREATE INDEX orders_user_idx ON orders (chat_id, created_at DESC);
-- the expiry sweep and the payment watchers only ever look at open orders
CREATE INDEX orders_pending_idx ON orders (expires_at) WHERE status = 'pending';

CREATE TABLE payments (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id            uuid NOT NULL REFERENCES orders (id),
    method              text NOT NULL CHECK (method IN ('sol', 'nowpayments')),
    -- a Solana transaction signature (base58 of 64 bytes) is spent once, ever
    tx_signature        text UNIQUE CHECK (tx_signature ~ '^[1-9A-HJ-NP-Za-km-z]{32,128}$'),
    -- NOWPayments' payment_id: its IPNs repeat, the payment is recorded once
    provider_payment_id text UNIQUE CHECK (length(provider_payment_id) BETWEEN 1 AND 128),
    amount_lamports     bigint CHECK (amount_lamports >= 0),
    amount_usd          numeric(12, 2) CHECK (amount_usd >= 0),
    status              text NOT NULL
                        CHECK (status IN ('pending', 'confirmed', 'partially_paid', 'failed',
                                          'refunded')),
    -- the verified transaction or IPN body, for audits (never secrets)
    raw                 jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (method = 'sol' AND tx_signature IS NOT NULL AND provider_payment_id IS NULL
            AND amount_lamports IS NOT NULL)
        OR (method = 'nowpayments' AND provider_payment_id IS NOT NULL AND tx_signature IS NULL)
    )
);
CREATE INDEX payments_order_idx ON payments (order_id);

CREATE TABLE subscriptions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id     bigint NOT NULL REFERENCES users (chat_id),
    plan        text NOT NULL CHECK (plan ~ '^[a-z0-9_]{1,32}$'),
    starts_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    source      text NOT NULL CHECK (source IN ('payment', 'coupon', 'admin')),
    order_id    uuid REFERENCES orders (id),
    coupon_id   bigint REFERENCES coupons (id),
    -- the admin who granted (source = 'admin') or revoked it
    granted_by  bigint,
    revoked_at  timestamptz,
    revoked_by  bigint,
    revoke_reason text CHECK (revoke_reason IS NULL OR length(revoke_reason) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > starts_at),
    CHECK (source <> 'payment' OR order_id IS NOT NULL),
    CHECK (source <> 'coupon' OR coupon_id IS NOT NULL),
    CHECK (revoked_at IS NOT NULL OR (revoked_by IS NULL AND revoke_reason IS NULL))
);
-- a paid order credits exactly one subscription, however often its payment is seen
CREATE UNIQUE INDEX subscriptions_order_key ON subscriptions (order_id) WHERE order_id IS NOT NULL;
-- "is this user subscribed now" and "whose subscription ends soon"
CREATE INDEX subscriptions_live_idx ON subscriptions (chat_id, expires_at DESC)
    WHERE revoked_at IS NULL;
CREATE INDEX subscriptions_expiry_idx ON subscriptions (expires_at) WHERE revoked_at IS NULL;

CREATE TABLE coupon_redemptions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    coupon_id   bigint NOT NULL REFERENCES coupons (id),
    chat_id     bigint NOT NULL REFERENCES users (chat_id),
    order_id    uuid REFERENCES orders (id),
    redeemed_at timestamptz NOT NULL DEFAULT now(),
    -- one redemption of a coupon per user
    UNIQUE (coupon_id, chat_id)
);
CREATE INDEX coupon_redemptions_user_idx ON coupon_redemptions (chat_id);

-- One row per alert sent: the call alert (kind 'call', threshold 0) and each multiplier alert
-- (kind 'multiplier', threshold 2, 5, 10, ...). A user is told each of these once, ever.
CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key   text NOT NULL UNIQUE CHECK (length(dedup_key) BETWEEN 1 AND 200),
    chat_id     bigint NOT NULL,
    -- "<chain>:<token address>", address in its original case
    token_key   text NOT NULL CHECK (length(token_key) BETWEEN 3 AND 200),
    kind        text NOT NULL CHECK (kind IN ('call', 'multiplier')),
    threshold   integer NOT NULL DEFAULT 0,
    fdv         numeric CHECK (fdv IS NULL OR fdv >= 0),
    -- the Telegram message id, once delivered
    message_id  bigint,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'call' AND threshold = 0) OR (kind = 'multiplier' AND threshold >= 2)),
    UNIQUE (chat_id, token_key, kind, threshold)
);
CREATE INDEX notifications_token_idx ON notifications (token_key);
CREATE INDEX notifications_user_idx ON notifications (chat_id, sent_at DESC);

-- Channel calls seen on the feed: the raw material of channel statistics.
CREATE TABLE calls_history (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key        text NOT NULL UNIQUE CHECK (length(dedup_key) BETWEEN 1 AND 200),
    event_id         text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 200),
    -- the feed's channel id, kept as the opaque text it arrives as
    channel_id       text NOT NULL CHECK (length(channel_id) BETWEEN 1 AND 64),
    channel_username text CHECK (channel_username IS NULL OR length(channel_username) <= 64),
    token_key        text NOT NULL CHECK (length(token_key) BETWEEN 3 AND 200),
    chain            text NOT NULL CHECK (length(chain) BETWEEN 1 AND 32),
    symbol           text CHECK (symbol IS NULL OR length(symbol) <= 64),
    called_at        timestamptz NOT NULL,
    fdv_at_call      numeric NOT NULL CHECK (fdv_at_call >= 0),
    -- raised as prices arrive: UPDATE ... SET peak_fdv = GREATEST(peak_fdv, $x) is idempotent
    peak_fdv         numeric CHECK (peak_fdv IS NULL OR peak_fdv >= 0),
    peak_at          timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    -- a channel calling the same token again is the same call
    UNIQUE (channel_id, token_key)
);
CREATE INDEX calls_history_token_idx ON calls_history (token_key);
CREATE INDEX calls_history_channel_idx ON calls_history (channel_id, called_at DESC);
CREATE INDEX calls_history_called_at_idx ON calls_history (called_at);

CREATE TABLE activity_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key   text NOT NULL UNIQUE CHECK (length(dedup_key) BETWEEN 1 AND 200),
    actor_kind  text NOT NULL CHECK (actor_kind IN ('user', 'admin', 'system')),
    -- the acting chat id (user or admin); NULL for the system
    actor_id    bigint,
    action      text NOT NULL CHECK (length(action) BETWEEN 1 AND 64),
    -- the user acted upon, when not the actor
    subject_id  bigint,
    detail      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    at          timestamptz NOT NULL DEFAULT now(),
    CHECK (actor_kind = 'system' OR actor_id IS NOT NULL)
);
CREATE INDEX activity_log_at_idx ON activity_log (at DESC);
CREATE INDEX activity_log_actor_idx ON activity_log (actor_id, at DESC) WHERE actor_id IS NOT NULL;
CREATE INDEX activity_log_subject_idx ON activity_log (subject_id, at DESC)
    WHERE subject_id IS NOT NULL;
CREATE INDEX activity_log_action_idx ON activity_log (action, at DESC);
