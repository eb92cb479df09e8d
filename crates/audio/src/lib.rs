//! tincan's audio engine (in progress: see the Audio issue).
