import { describe, expect, it } from 'vitest';
import {
  applyScalingEnv,
  CA_DMS_DEFAULTS,
  parseScalingConfig,
  resolveServiceConfig,
  ScalingConfigError,
} from '../../../functions/core/scaling/config.js';
import { GUIDE_FLAT_CONFIG } from '../../support/guide-config.js';

/** The paths a rejected document is rejected for. */
function rejectedPaths(document: unknown): string[] {
  try {
    parseScalingConfig(document);
  } catch (error) {
    expect(error).toBeInstanceOf(ScalingConfigError);
    return (error as ScalingConfigError).issues.map((i) => i.path);
  }
  throw new Error('expected the document to be rejected');
}

describe('runtime scaling configuration', () => {
  it('accepts the guide\'s flat JSON document as it stands', () => {
    const config = parseScalingConfig(GUIDE_FLAT_CONFIG);
    expect(config).toMatchObject(GUIDE_FLAT_CONFIG);
  });

  it('defaults to the guide\'s values and the four CA-DMS services', () => {
    const config = parseScalingConfig({});
    expect(config).toMatchObject({ ...GUIDE_FLAT_CONFIG, enabled: true, dry_run: false, policy: 'ca-dms', check_interval: 30 });
    expect(Object.keys(config.services)).toEqual(['backend-read', 'backend-write', 'frontend', 'worker']);
  });

  it('encodes the benchmark anchors in its defaults: 70 % CPU target and the 70/85/95/40 steps', () => {
    const config = parseScalingConfig({});
    expect(config.targets.cpu).toBe(70);
    expect(config.step).toMatchObject({ metric: 'cpu', scale_out_threshold: 70, scale_in_threshold: 40, adjustment_type: 'ChangeInCapacity' });
    expect(config.step.scale_out_steps.map((s) => [s.lower, s.adjustment])).toEqual([
      [0, 1],
      [15, 2],
      [25, 3],
    ]);
  });

  it('merges a service\'s overrides over the global settings', () => {
    const config = parseScalingConfig({ cpu_scale_up: 75, services: { worker: { policy: 'step', max_instances: 20, targets: { queue_depth: 50 } } } });
    const worker = resolveServiceConfig(config, 'worker');
    expect(worker).toMatchObject({ service: 'worker', policy: 'step', max_instances: 20, cpu_scale_up: 75 });
    expect(worker.targets).toMatchObject({ cpu: 70, queue_depth: 50 });
  });

  it('keeps the global step, hpa and targets values a service override does not name', () => {
    const config = parseScalingConfig({
      targets: { cpu: 55, memory: 60 },
      step: { scale_out_threshold: 60, scale_in_threshold: 30, adjustment_type: 'ExactCapacity', scale_out_steps: [{ lower: 0, upper: null, adjustment: 4 }], scale_in_steps: [{ lower: null, upper: 0, adjustment: 2 }] },
      hpa: { tolerance: 0.2, behavior: { scaleDown: { stabilizationWindowSeconds: 60 } } },
      services: { worker: { targets: { queue_depth: 50 }, step: { scale_in_threshold: 20 }, hpa: { behavior: { scaleUp: { stabilizationWindowSeconds: 0 } } } } },
    });
    const worker = resolveServiceConfig(config, 'worker');
    expect(worker.targets).toEqual({ cpu: 55, memory: 60, response_time: null, connections: null, queue_depth: 50 });
    expect(worker.step).toEqual({ ...config.step, scale_in_threshold: 20 });
    expect(worker.hpa).toEqual({ tolerance: 0.2, behavior: { scaleDown: { stabilizationWindowSeconds: 60 }, scaleUp: { stabilizationWindowSeconds: 0 } } });
  });

  it('has the ca-dms settings in one section with their defaults, overridable per service', () => {
    const config = parseScalingConfig({ ca_dms: { target_violation_rate: 0.02 }, services: { worker: { ca_dms: { lead_periods: 5 } } } });
    expect(resolveServiceConfig(config, 'worker').ca_dms).toEqual({ ...CA_DMS_DEFAULTS, target_violation_rate: 0.02, lead_periods: 5 });
    expect(resolveServiceConfig(config, 'frontend').ca_dms).toEqual({ ...CA_DMS_DEFAULTS, target_violation_rate: 0.02 });
    expect(parseScalingConfig({}).ca_dms).toEqual(CA_DMS_DEFAULTS);
  });

  it('resolves separate scale-out and scale-in cooldowns, falling back to scale_cooldown', () => {
    const config = parseScalingConfig({ scale_cooldown: 120, scale_in_cooldown: 600 });
    expect(resolveServiceConfig(config, 'frontend')).toMatchObject({ cooldown_out: 120, cooldown_in: 600 });
  });

  describe('rejects invalid configuration, naming every offending path', () => {
    it('min above max', () => {
      expect(rejectedPaths({ min_instances: 12 })).toEqual(['min_instances']);
    });

    it('a scale-down threshold at its scale-up threshold', () => {
      expect(rejectedPaths({ memory_scale_down: 85 })).toEqual(['memory_scale_down']);
    });

    it('a negative value', () => {
      expect(rejectedPaths({ scale_cooldown: -1 })).toEqual(['scale_cooldown']);
    });

    it('a non-numeric value', () => {
      expect(rejectedPaths({ cpu_scale_up: '80' })).toEqual(['cpu_scale_up']);
    });

    it('an unknown key, by its own path', () => {
      expect(rejectedPaths({ services: { worker: { cpu_scale_upp: 70 } } })).toEqual(['services.worker.cpu_scale_upp']);
    });

    it('an unknown policy name', () => {
      expect(rejectedPaths({ policy: 'aggressive' })).toEqual(['policy']);
    });

    it('a cross-field problem together with a field-level one', () => {
      expect(rejectedPaths({ min_instances: 12, foo: 1 }).sort()).toEqual(['foo', 'min_instances']);
    });

    it('every problem of a document at once, in the global settings and in a service', () => {
      const paths = rejectedPaths({
        cpu_scale_down: 90,
        memory_scale_up: -1,
        policy: 'nope',
        services: { worker: { min_instances: 20, bar: 2 } },
      });
      expect(paths.sort()).toEqual(['cpu_scale_down', 'memory_scale_up', 'policy', 'services.worker.bar', 'services.worker.min_instances']);
    });

    it('does not invent a cross-field problem out of a value it already rejected', () => {
      expect(rejectedPaths({ cpu_scale_down: 'x', cpu_scale_up: 20 })).toEqual(['cpu_scale_down']);
    });

    it('step intervals with a gap, and a scale-in step that adds capacity', () => {
      const paths = rejectedPaths({
        step: {
          scale_out_steps: [
            { lower: 0, upper: 10, adjustment: 1 },
            { lower: 20, adjustment: 2 },
          ],
          scale_in_steps: [{ upper: 0, adjustment: 1 }],
        },
      });
      expect(paths.sort()).toEqual(['step.scale_in_steps.0.adjustment', 'step.scale_out_steps']);
    });

    it('a fractional step adjustment (AWS takes whole numbers)', () => {
      expect(rejectedPaths({ step: { scale_out_steps: [{ lower: 0, adjustment: 1.5 }] } })).toEqual(['step.scale_out_steps.0.adjustment']);
    });

    it('an unknown Kubernetes selectPolicy', () => {
      expect(rejectedPaths({ hpa: { behavior: { scaleUp: { selectPolicy: 'Fastest' } } } })).toEqual(['hpa.behavior.scaleUp.selectPolicy']);
    });

    it('ca-dms settings out of range or unknown, globally and per service', () => {
      expect(rejectedPaths({ ca_dms: { target_violation_rate: 0, lead_periods: 1.5 }, services: { worker: { ca_dms: { level_weight: 2, margin: 3 } } } })).toEqual([
        'ca_dms.target_violation_rate',
        'ca_dms.lead_periods',
        'services.worker.ca_dms.level_weight',
        'services.worker.ca_dms.margin',
      ]);
    });
  });

  describe('the guide\'s environment variables', () => {
    it('override the defaults', () => {
      const config = applyScalingEnv({}, { AUTO_SCALING_ENABLED: 'false', SCALING_CHECK_INTERVAL: '60', MIN_INSTANCES: '3', MAX_INSTANCES: '12' });
      expect(config).toMatchObject({ enabled: false, check_interval: 60, min_instances: 3, max_instances: 12 });
    });

    it('override the document', () => {
      expect(applyScalingEnv({ max_instances: 8 }, { MAX_INSTANCES: '6' }).max_instances).toBe(6);
    });

    it('are validated with the document as a whole', () => {
      expect(() => applyScalingEnv({}, { MIN_INSTANCES: '12' })).toThrow(/min_instances \(12\) must not exceed max_instances \(10\)/);
    });

    it('are named when unparsable, along with the document\'s own problems', () => {
      try {
        applyScalingEnv({ policy: 'nope' }, { MAX_INSTANCES: 'ten' });
        expect.unreachable();
      } catch (error) {
        expect((error as ScalingConfigError).issues.map((i) => i.path)).toEqual(['env.MAX_INSTANCES', 'policy']);
      }
    });
  });

  it('leaves a rejected document untouched (nothing is partially applied or stripped)', () => {
    const document = { cpu_scale_up: 90, min_instances: 50, services: { worker: { bogus: true } } };
    const copy = structuredClone(document);
    expect(() => parseScalingConfig(document)).toThrow(ScalingConfigError);
    expect(document).toEqual(copy);
  });
});
