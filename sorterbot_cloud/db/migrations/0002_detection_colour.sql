-- 0002_detection_colour: the median CIELab colour of each item detection.
--
-- (L*, a*, b*) of the middle of the item's box (vectorizer.colour.colour_lab), measured at
-- ingest next to the embedding and appended to the grouping features by the trigger
-- (planner.item_features). NULL for containers and for the items of frames stored before
-- this migration: `sorterbot-cloud db reembed` measures them from the archived frames.

ALTER TABLE detections
    ADD COLUMN colour_lab real[]
    CHECK (colour_lab IS NULL OR (array_ndims(colour_lab) = 1 AND array_length(colour_lab, 1) = 3));
