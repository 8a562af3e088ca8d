//! pmoflow
