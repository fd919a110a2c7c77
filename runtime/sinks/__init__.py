"""Where results go besides the ZeroMQ publisher: each sink a small class behind one interface (base.Sink)."""
