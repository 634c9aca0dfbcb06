import { CloudWatchClient, GetMetricDataCommand, type GetMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { DescribeDBInstancesCommand, RDSClient, type DBInstance } from '@aws-sdk/client-rds';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import { RdsInventory, RdsInventoryError, SHARD_TAG } from '../../../functions/adapters/aws/rds-inventory.js';

// 42 s into a minute: the window must end at the minute before.
const NOW = new Date(Date.UTC(2026, 10, 27, 9, 0, 42));
const GIB = 1024 ** 3;
const rds = mockClient(RDSClient);
const cw = mockClient(CloudWatchClient);

afterEach(() => {
  rds.reset();
  cw.reset();
});

function inventory(): RdsInventory {
  return new RdsInventory({ rds: new RDSClient({ region: 'eu-west-1' }), cloudwatch: new CloudWatchClient({ region: 'eu-west-1' }), now: () => NOW });
}

function primary(id: string, shard: string, replicas: string[], extra: Partial<DBInstance> = {}): DBInstance {
  return {
    DBInstanceIdentifier: id,
    DBInstanceStatus: 'available',
    DBInstanceClass: 'db.r6g.large',
    Engine: 'postgres',
    AllocatedStorage: 100,
    Endpoint: { Address: `${id}.abc.eu-west-1.rds.amazonaws.com`, Port: 5432 },
    ReadReplicaDBInstanceIdentifiers: replicas,
    MultiAZ: true,
    AvailabilityZone: 'eu-west-1a',
    TagList: [{ Key: SHARD_TAG, Value: shard }],
    ...extra,
  };
}

function replica(id: string, source: string, shard: string, extra: Partial<DBInstance> = {}): DBInstance {
  return { ...primary(id, shard, []), ReadReplicaSourceDBInstanceIdentifier: source, MultiAZ: false, ...extra };
}

const TOPOLOGY = [primary('shard-1', 'shard_001', ['shard-1-r2', 'shard-1-r1']), replica('shard-1-r1', 'shard-1', 'shard_001'), replica('shard-1-r2', 'shard-1', 'shard_001'), primary('shard-2', 'shard_002', [])];

describe('RDS inventory', () => {
  it('asks DescribeDBInstances for PostgreSQL instances and follows its Marker', async () => {
    rds.on(DescribeDBInstancesCommand).resolvesOnce({ DBInstances: TOPOLOGY.slice(0, 2), Marker: 'page-2' }).resolvesOnce({ DBInstances: TOPOLOGY.slice(2) });
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

    const instances = await inventory().instances();

    expect(rds.commandCalls(DescribeDBInstancesCommand).map((c) => c.args[0].input)).toEqual([
      { Filters: [{ Name: 'engine', Values: ['postgres'] }], MaxRecords: 100 },
      { Filters: [{ Name: 'engine', Values: ['postgres'] }], MaxRecords: 100, Marker: 'page-2' },
    ]);
    expect(instances.map((i) => i.identifier)).toEqual(['shard-1', 'shard-1-r1', 'shard-1-r2', 'shard-2']);
  });

  it('asks CloudWatch for FreeStorageSpace of every instance and ReplicaLag of replicas, over the last ten whole minutes', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: TOPOLOGY.slice(0, 2) });
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

    await inventory().instances();

    const input: GetMetricDataCommandInput | undefined = cw.commandCalls(GetMetricDataCommand)[0]?.args[0].input;
    const metric = (name: string, id: string) => ({ Namespace: 'AWS/RDS', MetricName: name, Dimensions: [{ Name: 'DBInstanceIdentifier', Value: id }] });
    expect(input).toEqual({
      MetricDataQueries: [
        { Id: 'fs0', MetricStat: { Metric: metric('FreeStorageSpace', 'shard-1'), Period: 60, Stat: 'Minimum' }, ReturnData: true },
        { Id: 'fs1', MetricStat: { Metric: metric('FreeStorageSpace', 'shard-1-r1'), Period: 60, Stat: 'Minimum' }, ReturnData: true },
        { Id: 'rl1', MetricStat: { Metric: metric('ReplicaLag', 'shard-1-r1'), Period: 60, Stat: 'Maximum' }, ReturnData: true },
      ],
      StartTime: new Date(Date.UTC(2026, 10, 27, 8, 50, 0)),
      // The minute in progress at NOW (09:00:xx) is not read.
      EndTime: new Date(Date.UTC(2026, 10, 27, 9, 0, 0)),
      ScanBy: 'TimestampDescending',
    });
  });

  it('reports status, class, storage, topology and the newest metric datapoints', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: TOPOLOGY.slice(0, 2) });
    cw.on(GetMetricDataCommand).resolves({
      MetricDataResults: [
        { Id: 'fs0', Values: [40 * GIB, 41 * GIB] },
        { Id: 'fs1', Values: [] },
        { Id: 'rl1', Values: [3, 9] },
      ],
    });

    const [p, r] = await inventory().instances();

    expect(p).toEqual({
      identifier: 'shard-1',
      status: 'available',
      instanceClass: 'db.r6g.large',
      engine: 'postgres',
      allocatedStorageBytes: 100 * GIB,
      endpoint: { address: 'shard-1.abc.eu-west-1.rds.amazonaws.com', port: 5432 },
      role: 'primary',
      sourceIdentifier: null,
      replicaIdentifiers: ['shard-1-r2', 'shard-1-r1'],
      multiAz: true,
      availabilityZone: 'eu-west-1a',
      shardId: 'shard_001',
      freeStorageBytes: 40 * GIB,
      replicaLagSeconds: null,
    });
    expect(r).toMatchObject({ role: 'replica', sourceIdentifier: 'shard-1', freeStorageBytes: null, replicaLagSeconds: 3 });
  });

  it('keys facts by host:port so the inspector can merge them into node health', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [replica('shard-1-r1', 'shard-1', 'shard_001', { DBInstanceStatus: 'storage-full' })] });
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [{ Id: 'fs0', Values: [0] }, { Id: 'rl0', Values: [120] }] });

    const facts = await inventory().facts();

    expect([...facts.entries()]).toEqual([
      ['shard-1-r1.abc.eu-west-1.rds.amazonaws.com:5432', { status: 'storage-full', freeStorageBytes: 0, allocatedStorageBytes: 100 * GIB, replicaLagSeconds: 120 }],
    ]);
  });

  it('discovers shard endpoints from tagged primaries and their replicas, without handling credentials itself', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({ DBInstances: [...TOPOLOGY].reverse() });
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

    const shards = await inventory().discoverShards({ urlFor: (e) => `postgresql://app:secret@${e.address}:${e.port}/ca_dms` });

    expect(shards).toEqual([
      {
        shard_id: 'shard_001',
        database_url: 'postgresql://app:secret@shard-1.abc.eu-west-1.rds.amazonaws.com:5432/ca_dms',
        read_replicas: [
          'postgresql://app:secret@shard-1-r1.abc.eu-west-1.rds.amazonaws.com:5432/ca_dms',
          'postgresql://app:secret@shard-1-r2.abc.eu-west-1.rds.amazonaws.com:5432/ca_dms',
        ],
      },
      { shard_id: 'shard_002', database_url: 'postgresql://app:secret@shard-2.abc.eu-west-1.rds.amazonaws.com:5432/ca_dms', read_replicas: [] },
    ]);
  });

  it('leaves out untagged instances and instances that have no endpoint yet', async () => {
    rds.on(DescribeDBInstancesCommand).resolves({
      DBInstances: [primary('other', 'x', [], { TagList: [] }), primary('creating', 'shard_009', [], { Endpoint: undefined, DBInstanceStatus: 'creating' })],
    });
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

    expect(await inventory().discoverShards({ urlFor: (e) => `postgresql://${e.address}` })).toEqual([]);
  });

  it('raises a typed error, with the SDK error as cause, when RDS cannot be read', async () => {
    const denied = new Error('User is not authorized to perform: rds:DescribeDBInstances');
    rds.on(DescribeDBInstancesCommand).rejects(denied);

    const failure = inventory().instances();

    await expect(failure).rejects.toBeInstanceOf(RdsInventoryError);
    await expect(failure).rejects.toMatchObject({ cause: denied });
  });
});
