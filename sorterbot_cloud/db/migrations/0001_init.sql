-- 0001_init: arms, sessions, frames, detections (with item embeddings), commands.
--
-- Applied once per database by sorterbot_cloud.db.migrate, inside one transaction and
-- under an advisory lock. Never edit this file once applied anywhere: add 0002_*.sql.
--
-- Ids follow DESIGN.md (Terms): 1 to 64 letters, digits, '_', '-' and '.'.
-- Boxes are XYXY in pixels of the full-resolution frame; embeddings are the 512 floats
-- of the ResNet18 penultimate layer (CONTRIBUTING.md, Vectorizer), NULL for containers.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE arms (
    arm_id      text PRIMARY KEY CHECK (arm_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    arm_id      text NOT NULL REFERENCES arms (arm_id) ON DELETE CASCADE,
    session_id  text NOT NULL CHECK (session_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (arm_id, session_id)
);
-- The original client may omit arm_id on the trigger: look sessions up by session_id.
CREATE INDEX sessions_session_id_idx ON sessions (session_id);

CREATE TABLE frames (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    arm_id      text NOT NULL,
    session_id  text NOT NULL,
    image_name  text NOT NULL CHECK (length(image_name) BETWEEN 1 AND 64),
    pw0         double precision NOT NULL,
    width_px    integer NOT NULL CHECK (width_px > 0),
    height_px   integer NOT NULL CHECK (height_px > 0),
    image_uri   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (arm_id, session_id, image_name),
    FOREIGN KEY (arm_id, session_id) REFERENCES sessions (arm_id, session_id) ON DELETE CASCADE
);

CREATE TABLE detections (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frame_id    bigint NOT NULL REFERENCES frames (id) ON DELETE CASCADE,
    -- position of the detection in the Detections posted for its frame
    det_index   integer NOT NULL CHECK (det_index >= 0),
    class_id    smallint NOT NULL CHECK (class_id IN (0, 1)),
    x_min       real NOT NULL,
    y_min       real NOT NULL,
    x_max       real NOT NULL,
    y_max       real NOT NULL,
    score       real NOT NULL CHECK (score >= 0 AND score <= 1),
    embedding   vector(512),
    UNIQUE (frame_id, det_index),
    CHECK (x_max >= x_min AND y_max >= y_min)
);

CREATE TABLE commands (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    arm_id      text NOT NULL,
    session_id  text NOT NULL,
    constants   jsonb NOT NULL,
    result      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (arm_id, session_id) REFERENCES sessions (arm_id, session_id) ON DELETE CASCADE
);
CREATE INDEX commands_session_idx ON commands (arm_id, session_id, id DESC);
