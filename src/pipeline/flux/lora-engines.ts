/**
 * @file The glue between LoRA sets and engines: the pipeline's LoRA manager (files from LORA_DIR, the default set),
 * the LoRA engine of a mode with a set's feeds, which sets need the control-capable engine (a BFL Control LoRA), and
 * that engine's VAE encoder for control images. Switching sets only builds (or reuses) host arrays; an engine is
 * loaded once per mode and variant by the {@link EngineRegistry}.
 */
import type { Engine, HostTensor, Session } from '../../runtime/index.ts';
import {
  type FluxTransformerConfig,
  type LoraEngineLayout,
  resolveTransformerConfig,
} from '../../shared/vocabulary/index.ts';
import { createLoraManager, readLoraLayout } from '../lora/engine-layout.ts';
import type { LoraManager } from '../lora/lora-manager.ts';
import type { LoraSelection } from '../lora/types.ts';
import { controlChannelsOf, vaeEncoderPath } from './control.ts';
import type { ModelSource } from './engine-cache.ts';
import type { EngineRegistry } from './engine-registry.ts';

/** See the file header. */
export class LoraEngines {
  private manager: LoraManager | undefined;
  private readonly layouts = new Map<string, LoraEngineLayout>();

  constructor(
    private readonly source: ModelSource,
    private readonly engines: EngineRegistry,
    /** The only folder LoRA files are read from. */
    private readonly loraDir: string | undefined,
  ) {}

  /** The LoRA set manager (files from the LoRA folder, default set, feeds), created on first use. */
  get loras(): LoraManager {
    this.manager ??= createLoraManager(this.source.repo, this.loraDir);
    return this.manager;
  }

  /** The default set now; `[]` before the manager exists (nothing can have been loaded). */
  activeSet(): LoraSelection[] {
    return this.manager?.activeSet() ?? [];
  }

  /** `hidden_states` channels of the model's own transformer (without control channels). */
  get baseInChannels(): number {
    return resolveTransformerConfig(this.source.repo.components.transformer.config as FluxTransformerConfig).inChannels;
  }

  /**
   * The LoRA engine of `mode` and the extra transformer feeds of `set` on it (built once per set, then cached).
   * `controlChannels` picks the engine's input width; by default the set's own (see {@link controlChannelsFor}).
   * @throws LoraError for unknown, malformed or unsupported LoRAs.
   */
  async feeds(
    mode: string,
    set: readonly LoraSelection[],
    controlChannels = this.controlChannelsFor(set),
  ): Promise<{ engine: Engine; feeds: Record<string, HostTensor> }> {
    const engine = await this.engines.engine(mode, { lora: true, controlChannels });
    let layout = this.layouts.get(engine.manifestPath);
    if (!layout) {
      layout = readLoraLayout(engine.manifestPath);
      this.layouts.set(engine.manifestPath, layout);
    }
    return { engine, feeds: this.loras.feeds(layout, engine.manifestPath, set) };
  }

  /** Extra input channels `set` needs: 64 with a BFL Control LoRA in it, else 0. @throws LoraError */
  controlChannelsFor(set: readonly LoraSelection[]): number {
    if (set.length === 0) return 0;
    return controlChannelsOf(this.loras.resolve(set), this.baseInChannels);
  }

  /** The VAE encoder of `mode`'s control engine (compiled with that engine, so text-to-image never builds it). */
  async controlEncoder(mode: string, controlChannels: number): Promise<Session> {
    const engine = await this.engines.engine(mode, { lora: true, controlChannels });
    return this.engines.component('vae_encoder', vaeEncoderPath(engine.manifestPath));
  }
}
