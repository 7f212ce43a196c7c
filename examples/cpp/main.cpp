// Load torchkeep's AOTInductor package (model.aoti.pt2) and TorchScript file (model.torchscript.pt),
// run both on one input and print their outputs, one value per line, so a caller can compare them
// with eager PyTorch. The input is arange(n) / n reshaped to the shape given as the third argument
// (e.g. "2,10"), which Python recreates exactly.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) shape.push_back(std::stoll(part));
  return shape;
}

void print(const std::string& label, const at::Tensor& out) {
  auto flat = out.to(torch::kFloat64).contiguous().view(-1);
  std::cout << label << " " << flat.numel() << "\n" << std::setprecision(17);
  for (int64_t i = 0; i < flat.numel(); ++i) std::cout << flat[i].item<double>() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: tk_run MODEL.aoti.pt2 MODEL.torchscript.pt SHAPE (e.g. 2,10)\n";
    return 2;
  }
  torch::NoGradGuard no_grad;
  auto shape = parse_shape(argv[3]);
  int64_t n = 1;
  for (auto d : shape) n *= d;
  auto x = torch::arange(n, torch::kFloat32).div(static_cast<double>(n)).view(shape);
  try {
    torch::inductor::AOTIModelPackageLoader aoti(argv[1]);
    std::vector<at::Tensor> outs = aoti.run({x});
    print("aoti", outs.at(0));

    torch::jit::script::Module ts = torch::jit::load(argv[2]);
    ts.eval();
    print("torchscript", ts.forward({x}).toTensor());
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
