package etcd

import (
	"context"
	"log/slog"
	"maps"
	"slices"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLogger returns a zap logger, for the etcd client, that writes to log. The client's
// messages go to debug level, its errors to warn: it logs every retry of an RPC as a warning,
// which is noise for the store's callers, who get the error itself.
func zapLogger(log *slog.Logger) *zap.Logger {
	if !log.Enabled(context.Background(), slog.LevelWarn) {
		return zap.NewNop()
	}
	return zap.New(&slogCore{log: log})
}

// slogCore is a zapcore.Core that writes to a slog.Logger.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func slogLevel(l zapcore.Level) slog.Level {
	if l >= zapcore.ErrorLevel {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.log.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := slices.Sorted(maps.Keys(enc.Fields))
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, k, enc.Fields[k])
	}
	c.log.Log(context.Background(), slogLevel(e.Level), "etcd client: "+e.Message, args...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
