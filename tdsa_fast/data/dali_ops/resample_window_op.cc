// DALI CPU operator TdsaResampleWindow (fn.tdsa_resample_window): the CPU pipeline's resize,
// crop window, flip and normalisation in one pass per sample, with Pillow's bilinear resize
// arithmetic (pil_resample.h).  A DALI plugin, built and loaded at run time by
// tdsa_fast/data/dali_plugin.py; DALI's own resize and crop_mirror_normalize are used when it
// is not available and on the GPU.
//
// Inputs:  0  decoded images, uint8 HWC, 3 channels (any size per sample)
//          1  float32 [7] per sample: box_x0, box_y0, box_x1, box_y1 (the source box in pixels;
//             box_x1 <= 0 means the whole image), top, left (the window's corner in the
//             resized image), mirror (0 or 1); with store, an 8th value: the store row
// Output:  0  [3, size, size] (or [size, size, 3] with channels_last), float32 or float16, or with
//             levels the uint8 0..255 values themselves (no normalisation);
//          1  with resized only: uint8 [3, size, size], the whole resized image before the
//             window, flip and normalisation.
// store (an address, 0: none): instead of output 1, the whole resized image is written into
// row p[7] of the caller's uint8 [store_rows, 3, size, size] array, which must outlive the
// pipeline (the memory loader's store, filled without a copy).
#include <cstdint>
#include <vector>

#include "dali/core/float16.h"
#include "dali/pipeline/operator/operator.h"

#include "pil_resample.h"

namespace tdsa_dali {

class ResampleWindow : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit ResampleWindow(const ::dali::OpSpec& spec)
      : ::dali::Operator<::dali::CPUBackend>(spec),
        size_(spec.GetArgument<int>("size")),
        half_(spec.GetArgument<bool>("half")),
        levels_(spec.GetArgument<bool>("levels")),
        channels_last_(spec.GetArgument<bool>("channels_last")),
        resized_(spec.GetArgument<bool>("resized")),
        mean_(spec.GetArgument<float>("mean")),
        std_(spec.GetArgument<float>("std")),
        store_(spec.GetArgument<int64_t>("store")),
        store_rows_(spec.GetArgument<int64_t>("store_rows")) {
    DALI_ENFORCE(size_ > 0, "size must be positive");
    DALI_ENFORCE(std_ != 0.0f, "std must not be zero");
    DALI_ENFORCE(!(levels_ && half_), "levels (uint8 output) and half exclude each other");
    DALI_ENFORCE(store_ == 0 || (store_rows_ > 0 && !resized_),
                 "store needs store_rows > 0 and excludes the resized output");
  }

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc>& output_desc, const ::dali::Workspace& ws) override {
    const auto& images = ws.Input<::dali::CPUBackend>(0);
    const auto& params = ws.Input<::dali::CPUBackend>(1);
    const int n = images.num_samples();
    DALI_ENFORCE(images.type() == DALI_UINT8, "images must be uint8");
    DALI_ENFORCE(params.type() == DALI_FLOAT, "params must be float32");
    DALI_ENFORCE(params.num_samples() == n, "one params row per image");
    for (int i = 0; i < n; ++i) {
      const auto shape = images.tensor_shape(i);
      DALI_ENFORCE(shape.size() == 3 && shape[2] == 3,
                   ::dali::make_string("image ", i, " is not HWC with 3 channels: ", shape));
      const int64_t values = store_ != 0 ? 8 : 7;
      DALI_ENFORCE(params.tensor_shape(i).num_elements() == values,
                   ::dali::make_string("params of sample ", i, " must hold ", values, " values"));
      if (store_ != 0) {
        const float row = params.tensor<float>(i)[7];
        DALI_ENFORCE(row >= 0.0f && row < static_cast<float>(store_rows_) && row == static_cast<float>(
                         static_cast<int64_t>(row)),
                     ::dali::make_string("sample ", i, ": store row ", row, " is not an integer in [0, ",
                                         store_rows_, ")"));
      }
    }
    output_desc.resize(resized_ ? 2 : 1);
    output_desc[0].type = levels_ ? DALI_UINT8 : half_ ? DALI_FLOAT16 : DALI_FLOAT;
    if (channels_last_) {
      output_desc[0].shape = ::dali::uniform_list_shape(n, {size_, size_, 3});
    } else {
      output_desc[0].shape = ::dali::uniform_list_shape(n, {3, size_, size_});
    }
    if (resized_) {
      output_desc[1].type = DALI_UINT8;
      output_desc[1].shape = ::dali::uniform_list_shape(n, {3, size_, size_});
    }
    return true;
  }

  void RunImpl(::dali::Workspace& ws) override {
    const auto& images = ws.Input<::dali::CPUBackend>(0);
    const auto& params = ws.Input<::dali::CPUBackend>(1);
    auto& output = ws.Output<::dali::CPUBackend>(0);
    output.SetLayout(channels_last_ ? "HWC" : "CHW");
    ::dali::TensorList<::dali::CPUBackend>* resized = nullptr;
    if (resized_) {
      resized = &ws.Output<::dali::CPUBackend>(1);
      resized->SetLayout("CHW");
    }
    auto& pool = ws.GetThreadPool();
    const int n = images.num_samples();
    for (int i = 0; i < n; ++i) {
      pool.AddWork([&, i](int) {
        thread_local Scratch scratch;  // the pool's threads live as long as the pipeline
        const auto shape = images.tensor_shape(i);
        const int height = static_cast<int>(shape[0]), width = static_cast<int>(shape[1]);
        const float* p = params.tensor<float>(i);
        WindowSpec spec;
        spec.size = size_;
        const bool whole = p[2] <= 0.0f;
        spec.box_x0 = whole ? 0.0 : p[0];
        spec.box_y0 = whole ? 0.0 : p[1];
        spec.box_x1 = whole ? width : p[2];
        spec.box_y1 = whole ? height : p[3];
        spec.top = static_cast<int>(p[4]);
        spec.left = static_cast<int>(p[5]);
        spec.mirror = p[6] != 0.0f;
        spec.mean = levels_ ? 0.0f : mean_;
        spec.std = levels_ ? 1.0f : std_;
        spec.channels_last = channels_last_;
        const uint8_t* in = images.tensor<uint8_t>(i);
        uint8_t* resized_out = resized ? resized->mutable_tensor<uint8_t>(i) : nullptr;
        if (store_ != 0) {
          resized_out = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(store_)) +
                        static_cast<int64_t>(p[7]) * 3 * int64_t{size_} * size_;
        }
        if (levels_) {  // integer values 0..255 in float: the cast to uint8 is exact
          resample_window(in, height, width, int64_t{width} * 3, spec, output.mutable_tensor<uint8_t>(i), scratch,
                          resized_out);
        } else if (half_) {
          resample_window(in, height, width, int64_t{width} * 3, spec,
                          output.mutable_tensor<::dali::float16>(i), scratch, resized_out);
        } else {
          resample_window(in, height, width, int64_t{width} * 3, spec, output.mutable_tensor<float>(i),
                          scratch, resized_out);
        }
      }, images.tensor_shape(i).num_elements());
    }
    pool.RunAll();
  }

 private:
  int size_;
  bool half_, levels_, channels_last_, resized_;
  float mean_, std_;
  int64_t store_, store_rows_;
};

}  // namespace tdsa_dali

DALI_REGISTER_OPERATOR(TdsaResampleWindow, ::tdsa_dali::ResampleWindow, ::dali::CPU);

DALI_SCHEMA(TdsaResampleWindow)
    .DocStr("Pillow's bilinear resize of a source box to size x size, a size x size window of it "
            "(zero outside), horizontal flip and (v - mean) / std, in one pass (tdsa_fast).")
    .NumInput(2)
    .OutputFn([](const ::dali::OpSpec& spec) { return spec.GetArgument<bool>("resized") ? 2 : 1; })
    .AddArg("size", "Output height and width.", DALI_INT32)
    .AddOptionalArg("half", "float16 output instead of float32.", false)
    .AddOptionalArg("levels", "uint8 output of the 0..255 values, not normalised (mean and std unused).", false)
    .AddOptionalArg("channels_last", "HWC output instead of CHW.", false)
    .AddOptionalArg("resized", "A second output: the whole resized image, uint8 CHW, before the window.", false)
    .AddOptionalArg("store", "Address of a uint8 [store_rows, 3, size, size] array that receives each whole "
                    "resized image in row params[7] (0: none; excludes resized).", int64_t{0})
    .AddOptionalArg("store_rows", "Rows of the store array.", int64_t{0})
    .AddOptionalArg("mean", "Subtracted from every 0..255 value.", 127.5f)
    .AddOptionalArg("std", "Divides every value after the mean is subtracted.", 127.5f);
