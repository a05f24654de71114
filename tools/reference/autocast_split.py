"""lora-tune's mixed-precision split in a PEFT model: the frozen base's products under autocast,
the trained modules (LoRA's A and B, a classifier head in modules_to_save) in f32 with f32
gradients. Stock autocast runs those linears in the half type too; lora-tune keeps them f32
(issue #22), so fixtures that must follow it step for step take them out of autocast."""
import torch


def keep_trained_linears_in_f32(model):
    """Every trained nn.Linear (a LoRA factor or a modules_to_save copy) runs outside autocast,
    on its input widened to f32."""
    for name, module in model.named_modules():
        trained = any(part in name for part in (".lora_A.", ".lora_B.", ".modules_to_save."))
        if isinstance(module, torch.nn.Linear) and trained:
            def f32_forward(x, inner=module.forward):
                with torch.autocast("cpu", enabled=False):
                    return inner(x.float())
            module.forward = f32_forward
