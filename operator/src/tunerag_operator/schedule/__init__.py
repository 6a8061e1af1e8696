"""FineTuneSchedule: where its feedback comes from (`source`), what a run creates (`render`), and
the state machine that decides when (`controller`)."""
