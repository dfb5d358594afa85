/**
 * The OpenAPI 3.1 document of every JSON route: the vendor's callback, the probes and metrics, and the
 * operators' API under /api. Served at GET /api/openapi.json. Its schema objects are JSON Schema 2020-12;
 * test/integration/openapi.test.ts calls every operation for real and validates each answer against the
 * schema of its status, so a route that answers something else than documented fails the build.
 * Objects are closed (additionalProperties: false): a field added to an answer must be documented here.
 */
import { DOMAIN_STATUSES } from '../store/ledger.js';

type Schema = Record<string, unknown>;

const str: Schema = { type: 'string' };
const nstr: Schema = { type: ['string', 'null'] };
const int: Schema = { type: 'integer' };
const nint: Schema = { type: ['integer', 'null'] };
const num: Schema = { type: 'number' };
const bool: Schema = { type: 'boolean' };
const any: Schema = {};
const dt: Schema = { type: 'string', format: 'date-time' };
const ndt: Schema = { type: ['string', 'null'], format: 'date-time' };
const ref = (name: string): Schema => ({ $ref: `#/components/schemas/${name}` });
const arr = (items: Schema): Schema => ({ type: 'array', items });
const orNull = (schema: Schema): Schema => ({ oneOf: [schema, { type: 'null' }] });
const enumOf = (values: readonly string[]): Schema => ({ type: 'string', enum: [...values] });
/** A closed object; every property required unless listed in `optional`. */
const obj = (properties: Record<string, Schema>, optional: string[] = [], description?: string): Schema => ({
  type: 'object', ...(description ? { description } : {}), properties,
  required: Object.keys(properties).filter((k) => !optional.includes(k)), additionalProperties: false,
});

const json = (description: string, schema: Schema) => ({ description, content: { 'application/json': { schema } } });
const error = (description: string) => json(description, ref('Error'));

const readinessSchema = obj({ postgres: enumOf(['ok', 'down']), redis: enumOf(['ok', 'down']), rabbitmq: enumOf(['ok', 'down']) });

const schemas: Record<string, Schema> = {
  Error: obj({ error: str }, [], 'What went wrong, in one sentence (a 400 names the field).'),
  VendorReply: obj({ success: bool, messageId: nstr, message: str, status: int }, [],
    'The vendor\'s reply shape, for every answer of the callback route: {"success":true,"messageId":…,"message":"OK","status":0}, or success false and status 1 with the reason.'),
  CallbackItem: {
    type: 'object', required: ['targetName', 'reqType'],
    properties: { targetName: str, reqType: str, percent: { type: 'number', minimum: 0, maximum: 1 }, process: bool },
  },
  CallbackBody: { type: 'object', required: ['messageId', 'data'], properties: { messageId: str, data: arr(ref('CallbackItem')) } },
  Readiness: readinessSchema,
  DomainStatus: enumOf(DOMAIN_STATUSES),
  StatusCounts: obj(Object.fromEntries(DOMAIN_STATUSES.map((s) => [s, int]))),
  Batch: obj({ messageId: str, createdAt: dt, updatedAt: dt, callbacks: int, publishPending: bool, publishedAt: ndt, lastRunAt: ndt }),
  Domain: obj({
    messageId: str, domain: str, reqType: str, status: ref('DomainStatus'), attempts: int, userIdCdn: nstr, detail: nstr,
    percent: { type: ['number', 'null'] }, process: { type: ['boolean', 'null'] }, claimedBy: nstr, updatedAt: dt, finishedAt: ndt,
  }),
  Attempt: obj({
    messageId: str, domain: str, attemptedAt: dt, durationMs: int, instanceId: str,
    trigger: enumOf(['first_run', 'retry', 'stalled_sweep', 'replay']), tokenGeneration: int, httpStatus: nint, outcome: str, reason: nstr,
  }),
  Callback: obj({ id: int, receivedAt: dt, remoteAddr: nstr, itemCount: int, body: any, repeat: bool }, [],
    'One callback as received; repeat: the messageId had come before (merged into the batch).'),
  Alarm: obj({
    id: int, tag: str, messageId: nstr, alarmType: str, content: str, details: any,
    state: enumOf(['open', 'acknowledged', 'resolved']), occurrences: int, createdAt: dt, lastSeenAt: dt,
    acknowledgedAt: ndt, acknowledgedBy: nstr, ackNote: nstr, resolvedAt: ndt, resolvedBy: nstr, resolveNote: nstr,
    cursor: str, truncated: bool,
  }, ['truncated']),
  AlarmLifecycle: obj({
    id: int, tag: str, messageId: nstr, alarmType: str, content: str, details: any,
    state: enumOf(['open', 'acknowledged', 'resolved']), occurrences: int, createdAt: dt, lastSeenAt: dt,
    acknowledgedAt: ndt, acknowledgedBy: nstr, ackNote: nstr, resolvedAt: ndt, resolvedBy: nstr, resolveNote: nstr,
  }),
  BatchReport: obj({
    messageId: str, batch: ref('Batch'), counts: ref('StatusCounts'), domains: arr(ref('Domain')), attempts: arr(ref('Attempt')),
    callbacks: arr(ref('Callback')), alarms: arr(ref('Alarm')),
  }),
  BatchListItem: obj({
    messageId: str, createdAt: dt, updatedAt: dt, callbacks: int, publishPending: bool, publishedAt: ndt, lastRunAt: ndt,
    hasFailures: bool, open: bool, cursor: str, counts: ref('StatusCounts'), total: int,
  }),
  BatchList: obj({ batches: arr(ref('BatchListItem')), nextCursor: nstr }),
  ExportRow: obj({ domain: str, status: ref('DomainStatus'), detail: nstr, user_id_cdn: nstr, attempts: int, updated: dt }),
  BatchExport: obj({ messageId: str, exportedAt: dt, domains: arr(ref('ExportRow')) }),
  ReplayRequest: obj({
    all: bool, dryRun: bool,
    domains: { type: 'array', items: str, minItems: 1, maxItems: 1000 },
    reason: { type: 'string', minLength: 1, maxLength: 500 },
  }, ['all', 'dryRun', 'domains', 'reason'], 'reason is required unless dryRun. With domains, only those are re-opened.'),
  ReplayAnswer: obj({
    messageId: str, dryRun: bool, published: bool,
    reopened: arr(obj({ domain: str, status: ref('DomainStatus') })),
    reopen: arr(obj({ domain: str, status: ref('DomainStatus'), detail: nstr, why: str })),
    skipped: arr(obj({ domain: str, status: ref('DomainStatus'), why: str })),
    changes: arr(obj({ domain: str, from: ref('DomainStatus'), to: enumOf(['pending']) })),
  }),
  Inventory: obj({ domain: str, userIdCdn: str, status: enumOf(['active', 'deleted']), deletedAt: ndt, deletedByMessageId: nstr, importedAt: dt }),
  DomainHistory: obj({
    messageId: str, domain: str, reqType: str, status: ref('DomainStatus'), attempts: int, userIdCdn: nstr, detail: nstr,
    percent: { type: ['number', 'null'] }, process: { type: ['boolean', 'null'] }, claimedBy: nstr, updatedAt: dt, finishedAt: ndt,
    createdAt: dt, batchCreatedAt: dt, callbacks: int,
  }),
  DomainReport: obj({ domain: str, inventory: orNull(ref('Inventory')), batches: arr(ref('DomainHistory')) }),
  TokenState: obj({
    readAt: dt, generation: nint, fetchedAt: ndt, ageSeconds: { type: ['number', 'null'] }, expiresAt: ndt,
    expiresInSeconds: { type: ['number', 'null'] }, fetchDay: str, fetchesToday: int, dailyBudget: int, budgetAlarmAt: int,
    externalInvalidationsLastHour: int, contentionMax: int, lastExternalInvalidationAt: ndt,
    circuit: obj({ open: bool, reason: nstr, remainingSeconds: num, until: ndt }),
  }),
  QueueDepths: obj({ jobs: int, retryTiers: arr(obj({ delayMs: int, messages: int })), parked: int }),
  Overview: obj({
    readAt: dt, readiness: ref('Readiness'),
    token: orNull(ref('TokenState')), tokenError: nstr,
    queues: orNull(ref('QueueDepths')), queuesError: nstr,
    publish: orNull(obj({ waiting: int, oldestAgeSeconds: { type: ['number', 'null'] } })),
    alarms: orNull(obj({ open: int, acknowledged: int })),
    ledgerError: nstr,
  }, [], 'null parts say why in their *Error field (the detail is in the service log).'),
  AlarmList: obj({ alarms: arr(ref('Alarm')), counts: { type: 'object', additionalProperties: ref('StatusCounts') }, nextCursor: nstr }),
  AlarmDetail: obj({ alarm: ref('Alarm'), counts: orNull(ref('StatusCounts')) }),
  AlarmStepRequest: obj({ note: { type: 'string', maxLength: 2000 } }, ['note']),
  AlarmStep: obj({ alarm: ref('AlarmLifecycle') }),
  AuditEntry: obj({
    id: int, at: dt, action: enumOf(['replay', 'bulk_replay_start', 'bulk_replay_cancel', 'acknowledge', 'resolve']),
    actor: str, role: nstr, via: nstr, reason: nstr, target: { type: 'object' }, changes: arr(any), cursor: str,
  }),
  AuditTrail: obj({ entries: arr(ref('AuditEntry')), nextCursor: nstr }),
  BulkFilter: obj({ hasFailures: { const: true }, since: ndt, until: ndt, detailMatches: nstr }),
  BulkRequest: obj({
    filter: obj({ hasFailures: { const: true }, since: nstr, until: nstr, detailMatches: { type: ['string', 'null'], maxLength: 200 } }, ['since', 'until', 'detailMatches']),
    dryRun: bool, reason: { type: 'string', minLength: 1, maxLength: 500 },
  }, ['dryRun', 'reason'], 'reason is required unless dryRun; detailMatches is a plain substring (any case), never a pattern.'),
  BulkPreview: obj({
    dryRun: { const: true }, filter: ref('BulkFilter'), batchCount: int, domainCount: int, maxBatches: int,
    batches: arr(obj({ messageId: str, createdAt: dt, domainCount: int, domains: arr(obj({ domain: str, status: ref('DomainStatus'), detail: nstr })) })),
  }),
  BulkReplay: obj({
    id: int, status: enumOf(['running', 'done', 'cancelled', 'failed']), filter: ref('BulkFilter'), reason: str,
    createdBy: str, createdRole: nstr, createdVia: nstr, createdAt: dt, total: int, done: int, reopened: int, owner: str,
    heartbeatAt: dt, finishedAt: ndt, cancelledBy: nstr, error: nstr,
  }),
  BulkReplayAnswer: obj({ bulkReplay: ref('BulkReplay') }),
  BulkReplayList: obj({ bulkReplays: arr(ref('BulkReplay')) }),
  CancelRequest: obj({ reason: { type: 'string', minLength: 1, maxLength: 500 } }, ['reason']),
};

const params = {
  messageId: { name: 'messageId', in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,128}$' } },
  alarmId: { name: 'id', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } },
  bulkId: { name: 'id', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } },
  domain: { name: 'domain', in: 'path', required: true, schema: str },
  limit: { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 200, default: 50 } },
  since: (what: string) => ({ name: 'since', in: 'query', description: `${what} at or after (a date or date-time, UTC unless an offset is given)`, schema: str }),
};

const unauthorized = error('no credential, or a wrong one (WWW-Authenticate: Bearer)');
const forbidden = error('the operator API is off (no credential configured), or a viewer asked to change something');
const invalid = error('a query parameter, path parameter or body field is malformed or unknown; the reason names it');
const notFound = error('no such batch, alarm or bulk replay');
const unavailable = error('PostgreSQL is unreachable (503, retry), or an unexpected failure (500)');
const guarded = { '401': unauthorized, '403': forbidden, default: unavailable };
const body = (schema: Schema, required = false) => ({ required, content: { 'application/json': { schema } } });

const paths: Record<string, Record<string, unknown>> = {
  '/api/pm/pipe/callback': {
    post: {
      summary: 'The config-management pipeline\'s callback: store the batch, queue its job, answer in the vendor\'s shape',
      security: [{ callbackToken: [] }, {}], // {}: with CALLBACK_AUTH=none
      requestBody: body(ref('CallbackBody'), true),
      responses: {
        '200': json('stored (or merged into the batch of the same messageId)', ref('VendorReply')),
        '400': json('malformed body: the message names the item and field', ref('VendorReply')),
        '401': json('missing or wrong X-Callback-Token', ref('VendorReply')),
        '413': json('body larger than CALLBACK_BODY_LIMIT', ref('VendorReply')),
        '415': json('Content-Type is not application/json', ref('VendorReply')),
        default: json('403 caller address not allowed; 503 PostgreSQL unavailable, please retry', ref('VendorReply')),
      },
    },
  },
  '/healthz': { get: { summary: 'The process is up', security: [], responses: { '200': json('always', obj({ status: enumOf(['ok']) })) } } },
  '/readyz': {
    get: {
      summary: 'ok/down per dependency (never an address or error text)',
      security: [],
      responses: {
        '200': json('every dependency is ok', obj({ status: enumOf(['ready']), checks: ref('Readiness') })),
        '503': json('some dependency is down', obj({ status: enumOf(['not ready']), checks: ref('Readiness') })),
      },
    },
  },
  '/metrics': {
    get: {
      summary: 'Prometheus metrics (text); needs a viewer credential unless METRICS_AUTH=none',
      security: [{ bearer: [] }, {}],
      responses: { '200': { description: 'the exposition format', content: { 'text/plain': { schema: str } } }, '401': unauthorized, '403': forbidden },
    },
  },
  '/api/openapi.json': {
    get: { summary: 'This document', security: [], responses: { '200': json('OpenAPI 3.1', { type: 'object', required: ['openapi', 'paths'] }) } },
  },
  '/api/overview': {
    get: {
      summary: 'Readiness, the shared token, queue depths, the relay\'s backlog and the open alarms in one answer',
      responses: { '200': json('each part is null with its *Error when its dependency cannot be read', ref('Overview')), ...guarded },
    },
  },
  '/api/batches': {
    get: {
      summary: 'Recent batches, newest first, with counts by status (keyset pages)',
      parameters: [
        { name: 'hasFailures', in: 'query', description: 'true: some domain failed or unknown_domain; false: none', schema: enumOf(['true', 'false']) },
        { name: 'open', in: 'query', description: 'true: some domain pending, in_progress, retryable or awaiting_pipeline; false: none', schema: enumOf(['true', 'false']) },
        params.since('created'), { name: 'until', in: 'query', description: 'created before', schema: str },
        { name: 'before', in: 'query', description: 'nextCursor of the previous page', schema: str }, params.limit,
      ],
      responses: { '200': json('one page', ref('BatchList')), '400': invalid, ...guarded },
    },
  },
  '/api/batches/{messageId}': {
    get: {
      summary: 'One batch: its row, counts, domains, attempt history, the callbacks received and its alarms',
      parameters: [params.messageId],
      responses: { '200': json('the batch report', ref('BatchReport')), '400': invalid, '404': notFound, ...guarded },
    },
  },
  '/api/batches/{messageId}/export': {
    get: {
      summary: 'The batch\'s domains that are not deleted (status other than succeeded), as an attachment for the customer',
      parameters: [params.messageId, { name: 'format', in: 'query', schema: { type: 'string', enum: ['csv', 'json'], default: 'csv' } }],
      responses: {
        '200': {
          description: 'CSV (RFC 4180, header row; a cell starting with = + - @ gets a leading \') or JSON; Content-Disposition: attachment',
          content: { 'text/csv': { schema: str }, 'application/json': { schema: ref('BatchExport') } },
        },
        '400': invalid, '404': notFound, ...guarded,
      },
    },
  },
  '/api/batches/{messageId}/replay': {
    post: {
      summary: 'Re-open the batch\'s failed and stuck domains (or only the named ones) and publish its job; dryRun previews exactly that',
      parameters: [params.messageId],
      requestBody: body(ref('ReplayRequest')),
      responses: {
        '200': json('re-opened (or, with dryRun, what would be); an audit row records who, why and each change', ref('ReplayAnswer')),
        '400': invalid, '404': notFound, ...guarded,
      },
    },
  },
  '/api/token': {
    get: { summary: 'The shared token\'s state without the secret', responses: { '200': json('read from Redis', ref('TokenState')), ...guarded } },
  },
  '/api/domains/{domain}': {
    get: {
      summary: 'Start from a domain: its inventory row and every batch that carried it',
      parameters: [params.domain],
      responses: { '200': json('the domain report', ref('DomainReport')), '400': invalid, '404': notFound, ...guarded },
    },
  },
  '/api/alarms': {
    get: {
      summary: 'One page of alarms, newest first, with the counts of the batches they name',
      parameters: [
        { name: 'messageId', in: 'query', description: 'only these batches (repeat for several, at most 100)', schema: arr(str), style: 'form', explode: true },
        { name: 'state', in: 'query', description: 'default: open and acknowledged', schema: enumOf(['open', 'acknowledged', 'resolved', 'all']) },
        params.since('raised'), { name: 'before', in: 'query', schema: str }, params.limit,
      ],
      responses: { '200': json('one page', ref('AlarmList')), '400': invalid, ...guarded },
    },
  },
  '/api/alarms/{id}': {
    get: {
      summary: 'One alarm, whole', parameters: [params.alarmId],
      responses: { '200': json('the alarm and its batch\'s counts', ref('AlarmDetail')), '400': invalid, '404': notFound, ...guarded },
    },
  },
  '/api/alarms/{id}/acknowledge': {
    post: {
      summary: 'open -> acknowledged (someone is on it); by = the caller', parameters: [params.alarmId],
      requestBody: body(ref('AlarmStepRequest')),
      responses: {
        '200': json('acknowledged, with an audit row', ref('AlarmStep')), '400': invalid, '404': notFound,
        '409': error('the alarm is not open (already acknowledged or resolved); nothing changed'), ...guarded,
      },
    },
  },
  '/api/alarms/{id}/resolve': {
    post: {
      summary: 'open or acknowledged -> resolved, with a note saying what fixed it; by = the caller', parameters: [params.alarmId],
      requestBody: body(ref('AlarmStepRequest'), true),
      responses: {
        '200': json('resolved, with an audit row', ref('AlarmStep')), '400': invalid, '404': notFound,
        '409': error('the alarm is already resolved; nothing changed'), ...guarded,
      },
    },
  },
  '/api/audit': {
    get: {
      summary: 'Every replay, bulk replay, acknowledgement and resolution, newest first: who, when, why and what changed',
      parameters: [
        { name: 'action', in: 'query', schema: enumOf(['replay', 'bulk_replay_start', 'bulk_replay_cancel', 'acknowledge', 'resolve']) },
        { name: 'before', in: 'query', schema: str }, params.limit,
      ],
      responses: { '200': json('one page', ref('AuditTrail')), '400': invalid, ...guarded },
    },
  },
  '/api/replays/bulk': {
    get: {
      summary: 'The newest bulk replays', parameters: [params.limit],
      responses: { '200': json('newest first', ref('BulkReplayList')), '400': invalid, ...guarded },
    },
    post: {
      summary: 'Replay the failures of every batch a filter matches (dryRun: counts and the first 50 batches)',
      requestBody: body(ref('BulkRequest'), true),
      responses: {
        '200': json('dryRun: what it would touch', ref('BulkPreview')),
        '202': json('started in the background (Location: its progress)', ref('BulkReplayAnswer')),
        '400': invalid, ...guarded,
      },
    },
  },
  '/api/replays/bulk/{id}': {
    get: {
      summary: 'A bulk replay\'s progress', parameters: [params.bulkId],
      responses: { '200': json('its row', ref('BulkReplayAnswer')), '400': invalid, '404': notFound, ...guarded },
    },
  },
  '/api/replays/bulk/{id}/cancel': {
    post: {
      summary: 'Stop a running bulk replay before its next batch', parameters: [params.bulkId],
      requestBody: body(ref('CancelRequest')),
      responses: {
        '200': json('cancelled, with an audit row', ref('BulkReplayAnswer')), '400': invalid, '404': notFound,
        '409': error('it already ended (done, cancelled or failed); nothing changed'), ...guarded,
      },
    },
  },
};

export const openApiDocument = {
  openapi: '3.1.0',
  jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
  info: {
    title: 'pipeline-callback-processor',
    version: '1',
    description: 'The vendor\'s callback, the probes, and the operators\' JSON API (the console and the scripts use it). '
      + 'Operator routes need a viewer credential to read and an operator credential to change; every change writes an audit row.',
  },
  security: [{ bearer: [] }, { session: [] }],
  components: {
    securitySchemes: {
      bearer: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN (operator) or VIEWER_TOKEN (viewer)' },
      session: { type: 'apiKey', in: 'cookie', name: 'pcp_session', description: 'a console sign-in; changes also need X-CSRF-Token' },
      callbackToken: { type: 'apiKey', in: 'header', name: 'X-Callback-Token' },
    },
    schemas,
  },
  paths,
} as const;
