// Node-RED settings for tcpgate-bench's browser scenario (the baseline):
// no editor, no admin API, quiet logs. tcpgate-bench passes the HTTP port
// in NODE_RED_PORT (a free one, picked per run) and a temporary --userDir
// holding flows.json, written with the tcp in node's port.
module.exports = {
  uiHost: '127.0.0.1',
  uiPort: Number(process.env.NODE_RED_PORT),
  flowFile: 'flows.json',
  // Without an admin root there is no editor and no admin API; the
  // WebSocket listener is served from httpNodeRoot.
  httpAdminRoot: false,
  httpNodeRoot: '/',
  disableEditor: true,
  credentialSecret: false,
  telemetry: { enabled: false },
  diagnostics: { enabled: false },
  runtimeState: { enabled: false },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
  logging: { console: { level: 'warn', metrics: false, audit: false } },
};
